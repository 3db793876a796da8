use std::time::Duration;

use super::*;

fn spooler(per: usize, total: usize, file: u64) -> Spooler {
    Spooler::new(SpoolConfig {
        response_buffer: per,
        buffers_total: total,
        temp_path: std::env::temp_dir(),
        max_temp_file_size: file,
    })
    .unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn read_all(r: &mut SpoolReader) -> (String, bool) {
    let mut out = String::new();
    loop {
        match r.recv().await {
            Some(Ok(c)) if c.is_empty() => return (out, true),
            Some(Ok(c)) => out.push_str(std::str::from_utf8(&c).unwrap()),
            Some(Err(_)) | None => return (out, false),
        }
    }
}

/// Does `send` finish within a moment (it does not when it waits for the reader)?
async fn sends(w: &mut SpoolWriter, c: Bytes) -> bool {
    tokio::time::timeout(Duration::from_millis(100), w.send(c))
        .await
        .map(|r| r.unwrap())
        .is_ok()
}

#[tokio::test]
async fn small_answers_stay_in_memory_in_order() {
    let sp = spooler(64, 1024, 1 << 20);
    let (mut w, mut r) = sp.spool();
    for c in ["ab", "cd", "ef"] {
        w.send(b(c)).await.unwrap();
    }
    assert_eq!(sp.memory_in_use(), 6);
    assert_eq!(sp.temp_files(), 0);
    w.finish();
    assert_eq!(read_all(&mut r).await, ("abcdef".into(), true));
    assert_eq!(sp.memory_in_use(), 0);
}

#[tokio::test]
async fn past_the_response_buffer_chunks_go_to_an_unlinked_temp_file_read_back_in_order() {
    let sp = spooler(4, 1024, 1 << 20);
    let (mut w, mut r) = sp.spool();
    for c in ["0123", "4567", "89ab", "cdef"] {
        w.send(b(c)).await.unwrap();
    }
    assert_eq!(
        sp.memory_in_use(),
        4,
        "one chunk in memory, the rest on disk"
    );
    assert_eq!(sp.temp_files(), 1);
    assert_eq!(sp.spilled_bytes(), 12);
    // Memory frees as the client takes it: the next chunk goes to memory again, after
    // the file's bytes.
    assert_eq!(r.recv().await.unwrap().unwrap(), "0123");
    w.send(b("ghij")).await.unwrap();
    assert_eq!(sp.memory_in_use(), 4);
    w.finish();
    assert_eq!(read_all(&mut r).await, ("456789abcdefghij".into(), true));
    drop(r);
    assert_eq!(sp.temp_files(), 0, "the file is closed with the body");
    assert_eq!(sp.memory_in_use(), 0);
}

#[tokio::test]
async fn past_memory_and_disk_the_writer_waits_for_the_client() {
    let sp = spooler(4, 1024, 8);
    let (mut w, mut r) = sp.spool();
    assert!(sends(&mut w, b("0123")).await); // memory
    assert!(sends(&mut w, b("4567")).await); // file 0..4
    assert!(sends(&mut w, b("89ab")).await); // file 4..8
    let mut w2 = w;
    let blocked = tokio::spawn(async move {
        w2.send(b("cdef")).await.unwrap();
        w2
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!blocked.is_finished(), "the fourth chunk must wait");
    assert_eq!(r.recv().await.unwrap().unwrap(), "0123");
    let w = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("the writer goes on once the client took a chunk")
        .unwrap();
    w.finish();
    assert_eq!(read_all(&mut r).await, ("456789abcdef".into(), true));
}

#[tokio::test]
async fn the_file_starts_over_when_the_client_catches_up_so_it_stays_bounded() {
    let sp = spooler(0, 0, 8);
    let (mut w, mut r) = sp.spool();
    let mut want = String::new();
    for i in 0..20 {
        let c = format!("{i:04}");
        // No memory at all: the file takes 8 bytes, and must have room again every
        // round once the client has caught up.
        assert!(
            sends(&mut w, b(&c)).await,
            "round {i}: the file did not start over"
        );
        want.push_str(&c);
        let c2 = format!("x{i:03}");
        assert!(
            sends(&mut w, b(&c2)).await,
            "round {i}: the file did not start over"
        );
        want.push_str(&c2);
        let mut got = String::new();
        while got.len() < 8 {
            let c = tokio::time::timeout(Duration::from_secs(5), r.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            got.push_str(std::str::from_utf8(&c).unwrap());
        }
        assert_eq!(got, want[want.len() - 8..]);
        assert_eq!(sp.temp_files(), 1, "one file, reused");
    }
    assert_eq!(sp.memory_in_use(), 0);
}

#[tokio::test]
async fn the_memory_budget_is_shared_by_every_response() {
    let sp = spooler(8, 8, 1 << 20);
    let (mut w1, r1) = sp.spool();
    let (mut w2, mut r2) = sp.spool();
    w1.send(b("aaaaaaaa")).await.unwrap();
    assert_eq!(sp.memory_in_use(), 8);
    w2.send(b("bbbb")).await.unwrap();
    assert_eq!(
        sp.memory_in_use(),
        8,
        "the second response spills: the budget is spent"
    );
    assert_eq!(sp.temp_files(), 1);
    drop(r1);
    assert_eq!(
        sp.memory_in_use(),
        0,
        "a dropped body gives its memory back"
    );
    assert!(matches!(w1.send(b("x")).await, Err(SpoolError::Gone)));
    w2.send(b("cccc")).await.unwrap();
    assert_eq!(sp.memory_in_use(), 4);
    w2.finish();
    assert_eq!(read_all(&mut r2).await, ("bbbbcccc".into(), true));
}

#[tokio::test]
async fn a_dropped_reader_frees_the_file_and_wakes_a_waiting_writer() {
    let sp = spooler(4, 1024, 4);
    let (mut w, r) = sp.spool();
    w.send(b("0123")).await.unwrap();
    w.send(b("4567")).await.unwrap();
    assert_eq!(sp.temp_files(), 1);
    let blocked = tokio::spawn(async move { w.send(b("89ab")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(r);
    let res = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(res, Err(SpoolError::Gone)));
    assert_eq!(sp.temp_files(), 0);
    assert_eq!(sp.memory_in_use(), 0);
}

#[tokio::test]
async fn a_writer_gone_without_an_end_or_failing_cuts_the_body_after_what_was_buffered() {
    let sp = spooler(64, 1024, 0);
    let (mut w, mut r) = sp.spool();
    w.send(b("part")).await.unwrap();
    drop(w);
    assert_eq!(r.recv().await.unwrap().unwrap(), "part");
    assert!(r.recv().await.is_none());

    let (mut w, mut r) = sp.spool();
    w.send(b("part")).await.unwrap();
    w.fail(BodyError::AppAborted);
    assert_eq!(r.recv().await.unwrap().unwrap(), "part");
    assert!(matches!(r.recv().await, Some(Err(BodyError::AppAborted))));
}

#[tokio::test]
async fn a_temp_path_that_cannot_hold_files_is_refused_at_start() {
    let e = Spooler::new(SpoolConfig {
        response_buffer: 1,
        buffers_total: 1,
        temp_path: "/nonexistent/weir-spool".into(),
        max_temp_file_size: 1,
    });
    assert!(e.is_err());
    // Without temp files, the directory is not used.
    assert!(Spooler::new(SpoolConfig {
        response_buffer: 1,
        buffers_total: 1,
        temp_path: "/nonexistent/weir-spool".into(),
        max_temp_file_size: 0,
    })
    .is_ok());
}
