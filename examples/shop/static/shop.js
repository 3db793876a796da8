// Served by weir's front door ([[static]] in docs/config.md), never by a worker.
document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll(".price")) {
    el.title = "price in cents";
  }
});
