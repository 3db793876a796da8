//! The static stage (`[[static]]`): files under a path prefix are served by the front door
//! from a directory, without a worker (NGINX's `location /static/ { root ...; }`), with
//! `ETag` / `Last-Modified` and 304, `Range` (206, 416), HEAD, `expires`
//! (`Cache-Control: max-age` and `Expires`) and precompressed `NAME.br` / `NAME.gz`.
//! It runs after the limits stage (a static prefix can have its `[[route]]` zones) and
//! before the cache stage; on the HTTP listener only (behind a real NGINX, on the uwsgi
//! listener, NGINX serves its own static files).
//!
//! # Never outside the root
//! The path is decoded and normalised by weir-static ([`weir_static::resolve`]): `.` and
//! `..` segments in any spelling, encoded slashes, NUL bytes and broken escapes are refused
//! as a malformed path (400 `bad-request`). What is left is joined to the root, which was
//! canonicalized at start-up, and the file's own path is canonicalized the first time it is
//! opened: a symlink that leads out of the root is refused like a missing file (404
//! `not-found`), as are directories and anything that is not a regular file. Refusals are
//! logged (the access log line has the class; a path or symlink that tries to leave the
//! root is also a warning in weir's log).
//!
//! # Bodies, and why not sendfile
//! hyper writes response bodies from memory, so a true `sendfile(2)` would need the raw
//! socket, which hyper does not give back mid-connection. Instead weir keeps an
//! open-file cache that also holds contents ([`FileCache`], NGINX's `open_file_cache` plus
//! the page cache sendfile reads from): files up to [`MAX_CACHED_FILE`] are read once and
//! kept whole, in a cache bounded by [`CACHE_BYTES`] (least recently used out), keyed by
//! the path and checked on every request against the file's device, inode, size and
//! modification time (one `stat`, as NGINX makes without `open_file_cache`). Such a file is
//! answered as one `ResponseBody::Full` frame, a shared `Bytes` that costs no copy in
//! weir (ranges are slices of it). Larger files are streamed: a task reads them in
//! [`CHUNK`] pieces into the bounded channel of a `ResponseBody::Stream`, so memory per
//! download stays a few chunks however slow the client. A file that shrinks or fails
//! mid-stream cuts the connection (the client never takes a short body for a whole one).
//!
//! The canonical-path check is made when the cache entry is made; an entry is reused while
//! the path still leads to the same inode, so a symlink changed to point elsewhere is seen
//! at the next request. Someone who can create symlinks inside the root while weir opens a
//! file could race the check; the root is meant to be written by deployments only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tracing::warn;
use weir_config::StaticConfig;
use weir_errors::ErrorClass;
use weir_pool::ResponseBody;
use weir_static::cond::{self, Conditionals};
use weir_static::encoding::{self, Coding};
use weir_static::{parse_range, Ranges};

use crate::rejection::Rejection;

/// Files up to this size are kept whole in memory.
pub const MAX_CACHED_FILE: u64 = 1024 * 1024;
/// The contents cache's bound (bytes of file contents, plus a little per entry).
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Larger files are read and sent in pieces of this size.
pub const CHUNK: usize = 256 * 1024;
/// Pieces read ahead of the client per streamed download.
const STREAM_AHEAD: usize = 2;

/// Every `[[static]]` mount and the file cache they share.
#[derive(Debug)]
pub struct FrontStatic {
    mounts: Vec<Mount>,
    files: FileCache,
}

/// One `[[static]]` table, ready to serve.
#[derive(Debug)]
pub struct Mount {
    prefix: String,
    root: PathBuf,
    max_age: Option<Duration>,
    cache_control: Option<HeaderValue>,
    precompressed: bool,
}

impl FrontStatic {
    /// Appends the open-file and contents cache's metrics to a Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        use std::sync::atomic::Ordering::Relaxed;
        let f = &self.files;
        f.entries.run_pending_tasks();
        let _ = writeln!(
            out,
            "# HELP weir_static_cache_lookups_total Static file lookups: answered from the open-file cache (hit) or opened (miss).\n# TYPE weir_static_cache_lookups_total counter\nweir_static_cache_lookups_total{{outcome=\"hit\"}} {}\nweir_static_cache_lookups_total{{outcome=\"miss\"}} {}\n# HELP weir_static_cache_entries Files in the open-file cache.\n# TYPE weir_static_cache_entries gauge\nweir_static_cache_entries {}\n# HELP weir_static_cache_bytes Bytes the open-file cache holds (contents of small files, plus a little per entry).\n# TYPE weir_static_cache_bytes gauge\nweir_static_cache_bytes {}",
            f.hits.load(Relaxed),
            f.misses.load(Relaxed),
            f.entries.entry_count(),
            f.entries.weighted_size()
        );
    }

    /// The mounts of `[[static]]`, with their roots canonicalized (None when there are
    /// none). An error names the key (`static[N].root`) and says why.
    pub fn new(configs: &[StaticConfig]) -> Result<Option<FrontStatic>, String> {
        if configs.is_empty() {
            return Ok(None);
        }
        let mut mounts = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let root = std::fs::canonicalize(&c.root)
                .map_err(|e| format!("static[{i}].root: {}: {e}", c.root.display()))?;
            if !root.is_dir() {
                return Err(format!(
                    "static[{i}].root: {} is not a directory",
                    c.root.display()
                ));
            }
            let max_age = c.expires.map(|e| e.as_duration());
            mounts.push(Mount {
                prefix: c.prefix_trimmed().to_string(),
                root,
                max_age,
                cache_control: max_age.map(|a| {
                    HeaderValue::from_str(&format!("max-age={}", a.as_secs())).expect("digits")
                }),
                precompressed: c.precompressed,
            });
        }
        // Longest prefix first: the first match is the most specific.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        Ok(Some(FrontStatic {
            mounts,
            files: FileCache::new(CACHE_BYTES),
        }))
    }

    /// The mount a request path falls under: the prefix, then the end of the path or a `/`.
    pub fn find(&self, path: &str) -> Option<&Mount> {
        self.mounts.iter().find(|m| {
            path.strip_prefix(m.prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// What was found at a path.
#[derive(Debug)]
enum Miss {
    /// Nothing, a directory, or not a regular file.
    NotFound(&'static str),
    /// The path leads out of the root (a symlink).
    Outside(PathBuf),
    /// Another I/O failure (permissions...).
    Io(std::io::Error),
}

impl From<std::io::Error> for Miss {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            NotFound | NotADirectory | IsADirectory => Miss::NotFound("no such file"),
            _ => Miss::Io(e),
        }
    }
}

/// A file as last seen: its identity, validators, and its contents when small.
#[derive(Debug)]
struct FileEntry {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: SystemTime,
    /// Where the path leads (inside the root).
    canonical: PathBuf,
    etag: HeaderValue,
    etag_text: String,
    last_modified: HeaderValue,
    /// The whole file, when it is at most [`MAX_CACHED_FILE`].
    body: Option<Bytes>,
}

impl FileEntry {
    fn same_file(&self, md: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        md.dev() == self.dev
            && md.ino() == self.ino
            && md.len() == self.len
            && md.modified().ok() == Some(self.mtime)
    }
}

/// The open-file and contents cache (see the module doc), bounded in bytes.
#[derive(Debug)]
pub struct FileCache {
    entries: moka::sync::Cache<PathBuf, Arc<FileEntry>>,
    /// Lookups answered from the cache (the file unchanged since it was read).
    hits: std::sync::atomic::AtomicU64,
    /// Lookups that opened the file.
    misses: std::sync::atomic::AtomicU64,
}

impl FileCache {
    fn new(bytes: u64) -> FileCache {
        FileCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|k: &PathBuf, v: &Arc<FileEntry>| {
                    let n = v.body.as_ref().map_or(0, Bytes::len)
                        + k.as_os_str().len()
                        + v.canonical.as_os_str().len()
                        + 256;
                    u32::try_from(n).unwrap_or(u32::MAX)
                })
                .build(),
            hits: Default::default(),
            misses: Default::default(),
        }
    }

    /// The file at `full` (under `root`): one `stat`, and the cached entry while it names
    /// the same file; otherwise it is opened, checked to be inside the root, and (when
    /// small) read, off the event loop.
    async fn lookup(&self, root: &Path, full: &Path) -> Result<Arc<FileEntry>, Miss> {
        let md = std::fs::metadata(full)?;
        if md.is_dir() {
            return Err(Miss::NotFound("a directory"));
        }
        if !md.is_file() {
            return Err(Miss::NotFound("not a regular file"));
        }
        if let Some(e) = self.entries.get(full) {
            if e.same_file(&md) {
                self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(e);
            }
        }
        self.misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (root, path) = (root.to_path_buf(), full.to_path_buf());
        let entry = tokio::task::spawn_blocking(move || load(&root, &path))
            .await
            .map_err(|e| Miss::Io(std::io::Error::other(e)))??;
        let entry = Arc::new(entry);
        if entry.body.is_some() || entry.len > MAX_CACHED_FILE {
            self.entries.insert(full.to_path_buf(), entry.clone());
        }
        Ok(entry)
    }
}

/// Opens a file for the cache: where it leads (inside `root`?), what it is, and its
/// contents when small.
fn load(root: &Path, full: &Path) -> Result<FileEntry, Miss> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let canonical = std::fs::canonicalize(full)?;
    if !canonical.starts_with(root) {
        return Err(Miss::Outside(canonical));
    }
    let mut file = std::fs::File::open(&canonical)?;
    let md = file.metadata()?;
    if !md.is_file() {
        return Err(Miss::NotFound("not a regular file"));
    }
    let mtime = md.modified()?;
    let mut len = md.len();
    let body = if len <= MAX_CACHED_FILE {
        let mut buf = Vec::with_capacity(len as usize);
        (&mut file)
            .take(MAX_CACHED_FILE + 1)
            .read_to_end(&mut buf)?;
        len = buf.len() as u64;
        Some(Bytes::from(buf))
    } else {
        None
    };
    let etag_text = cond::etag(mtime, len);
    Ok(FileEntry {
        dev: md.dev(),
        ino: md.ino(),
        // Changed while being read: the entry will not match the next stat, so it is
        // made again then.
        len,
        mtime,
        canonical,
        etag: HeaderValue::from_str(&etag_text).expect("an ETag is ASCII"),
        etag_text,
        last_modified: HeaderValue::from_str(&cond::http_date(mtime)).expect("a date is ASCII"),
        body,
    })
}

/// Serves a request under `mount` (see the module doc): the file, 304, 206 or 416, or a
/// [`Rejection`] (400 for a malformed path, 404 for what is not a file under the root,
/// 405 for a method other than GET and HEAD).
pub async fn serve(
    fs: &FrontStatic,
    mount: &Mount,
    parts: &Parts,
    request_id: &str,
) -> Result<Response<ResponseBody>, Rejection> {
    let head = parts.method == Method::HEAD;
    if parts.method != Method::GET && !head {
        let mut r = Rejection::new(
            ErrorClass::MethodNotAllowed,
            format!(
                "{} is not allowed on static files under {}: use GET or HEAD",
                parts.method,
                display_prefix(&mount.prefix)
            ),
        );
        r.headers
            .push((header::ALLOW, HeaderValue::from_static("GET, HEAD")));
        return Err(r);
    }
    let path = parts.uri.path();
    let rest = &path[mount.prefix.len()..];
    let rel = weir_static::resolve(rest).map_err(|e| {
        warn!(request_id, path, "static file path refused: {e}");
        Rejection::new(
            ErrorClass::BadRequest,
            format!("static file path refused: {e}"),
        )
    })?;
    if rest.is_empty() || rest.ends_with('/') {
        // A directory's URL (weir lists no directories and serves no index files).
        return Err(refusal(Miss::NotFound("a directory"), path, request_id));
    }
    let full = mount.root.join(&rel);
    let entry = fs
        .files
        .lookup(&mount.root, &full)
        .await
        .map_err(|m| refusal(m, path, request_id))?;

    // A precompressed variant the client accepts, when there is one.
    let mut chosen = (entry.clone(), None);
    if mount.precompressed {
        if let Some(ae) = parts.headers.get(header::ACCEPT_ENCODING) {
            for coding in encoding::accepted(ae.as_bytes()) {
                let mut name = full.clone().into_os_string();
                name.push(coding.suffix());
                if let Ok(e) = fs.files.lookup(&mount.root, Path::new(&name)).await {
                    chosen = (e, Some(coding));
                    break;
                }
            }
        }
    }
    let (file, coding) = chosen;
    let ctype = weir_static::mime_for(&rel);
    let mut headers = HeaderMap::with_capacity(10);
    validators(&mut headers, mount, &file, coding);

    let h = &parts.headers;
    let conds = Conditionals {
        if_none_match: h.get(header::IF_NONE_MATCH).map(HeaderValue::as_bytes),
        if_modified_since: h.get(header::IF_MODIFIED_SINCE).map(HeaderValue::as_bytes),
        if_match: h.get(header::IF_MATCH).map(HeaderValue::as_bytes),
        if_unmodified_since: h
            .get(header::IF_UNMODIFIED_SINCE)
            .map(HeaderValue::as_bytes),
    };
    if conds.precondition_failed(&file.etag_text, file.mtime) {
        return Ok(with(
            StatusCode::PRECONDITION_FAILED,
            headers,
            ResponseBody::Empty,
        ));
    }
    if conds.not_modified(&file.etag_text, file.mtime) {
        return Ok(with(StatusCode::NOT_MODIFIED, headers, ResponseBody::Empty));
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    // Range: GET only (RFC 9110 14.2), and only while If-Range names this file.
    let ranges = match h.get(header::RANGE) {
        Some(r) if !head => {
            let keep = h
                .get(header::IF_RANGE)
                .is_none_or(|v| cond::if_range_holds(v.as_bytes(), &file.etag_text, file.mtime));
            if keep {
                parse_range(r.as_bytes(), file.len)
            } else {
                Ranges::Ignore
            }
        }
        _ => Ranges::Ignore,
    };
    let (status, start, len) = match ranges {
        Ranges::Ignore | Ranges::Many => (StatusCode::OK, 0, file.len),
        Ranges::One { start, end } => {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{}", file.len))
                    .expect("digits"),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Ranges::Unsatisfiable => {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{}", file.len)).expect("digits"),
            );
            headers.remove(header::CONTENT_TYPE);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            return Ok(with(
                StatusCode::RANGE_NOT_SATISFIABLE,
                headers,
                ResponseBody::Empty,
            ));
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let body = if head || len == 0 {
        ResponseBody::Empty
    } else if let Some(b) = &file.body {
        ResponseBody::Full(Some(b.slice(start as usize..(start + len) as usize)))
    } else {
        stream(&file, start, len)
            .await
            .map_err(|m| refusal(m, path, request_id))?
    };
    Ok(with(status, headers, body))
}

fn display_prefix(p: &str) -> &str {
    if p.is_empty() {
        "/"
    } else {
        p
    }
}

/// The validators and caching fields every answer about the file carries (304 included).
fn validators(h: &mut HeaderMap, mount: &Mount, file: &FileEntry, coding: Option<Coding>) {
    h.insert(header::ETAG, file.etag.clone());
    h.insert(header::LAST_MODIFIED, file.last_modified.clone());
    if let (Some(cc), Some(age)) = (&mount.cache_control, mount.max_age) {
        h.insert(header::CACHE_CONTROL, cc.clone());
        let expires = httpdate::fmt_http_date(SystemTime::now() + age);
        if let Ok(v) = HeaderValue::from_str(&expires) {
            h.insert(header::EXPIRES, v);
        }
    }
    if mount.precompressed {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if let Some(c) = coding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c.name()));
    }
}

fn with(status: StatusCode, headers: HeaderMap, body: ResponseBody) -> Response<ResponseBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// A lookup failure as weir's answer: 404 `not-found`, logged as a warning when the path
/// tried to leave the root.
fn refusal(m: Miss, path: &str, request_id: &str) -> Rejection {
    match m {
        Miss::NotFound(what) => Rejection::new(
            ErrorClass::NotFound,
            format!("no static file here ({what})"),
        ),
        Miss::Outside(to) => {
            warn!(
                request_id,
                path,
                leads_to = %to.display(),
                "static file refused: a symlink leads out of the root"
            );
            Rejection::new(
                ErrorClass::NotFound,
                "no static file here (outside the root)",
            )
        }
        Miss::Io(e) => {
            warn!(request_id, path, "static file cannot be read: {e}");
            Rejection::new(
                ErrorClass::NotFound,
                "no static file here (it cannot be read)",
            )
        }
    }
}

/// A large file's bytes `start..start+len` as a stream: the file is opened (and checked to
/// be the one looked up) before the answer starts; a task then reads it in [`CHUNK`]s into
/// a channel [`STREAM_AHEAD`] deep. Fewer bytes than promised (the file shrank, a read
/// failed) end the channel without its end mark, which cuts the connection.
async fn stream(file: &FileEntry, start: u64, len: u64) -> Result<ResponseBody, Miss> {
    use std::os::unix::fs::MetadataExt;
    let mut f = tokio::fs::File::open(&file.canonical).await?;
    let md = f.metadata().await?;
    if md.dev() != file.dev || md.ino() != file.ino {
        return Err(Miss::NotFound("the file changed"));
    }
    if start > 0 {
        f.seek(std::io::SeekFrom::Start(start)).await?;
    }
    let (tx, rx) = mpsc::channel(STREAM_AHEAD);
    tokio::spawn(async move {
        let mut left = len;
        while left > 0 {
            let want = (left as usize).min(CHUNK);
            let mut buf = BytesMut::with_capacity(want);
            while buf.len() < want {
                match (&mut f)
                    .take((want - buf.len()) as u64)
                    .read_buf(&mut buf)
                    .await
                {
                    Ok(0) | Err(_) => return, // shrank or failed: cut (no end mark)
                    Ok(_) => {}
                }
            }
            left -= want as u64;
            if tx.send(Ok(buf.freeze())).await.is_err() {
                return; // the client left
            }
        }
        let _ = tx.send(Ok(Bytes::new())).await;
    });
    Ok(ResponseBody::Stream(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(prefixes: &[&str]) -> FrontStatic {
        let dir = std::env::temp_dir();
        let configs: Vec<StaticConfig> = prefixes
            .iter()
            .map(|p| StaticConfig {
                prefix: p.to_string(),
                root: dir.clone(),
                expires: None,
                precompressed: false,
            })
            .collect();
        FrontStatic::new(&configs).unwrap().unwrap()
    }

    #[test]
    fn the_longest_prefix_on_a_segment_boundary() {
        let fs = mounts(&["/static", "/static/big/", "/assets"]);
        assert_eq!(fs.find("/static/a.css").unwrap().prefix, "/static");
        assert_eq!(fs.find("/static").unwrap().prefix, "/static");
        assert_eq!(fs.find("/static/big/x").unwrap().prefix, "/static/big");
        assert!(fs.find("/staticfoo").is_none());
        assert!(fs.find("/").is_none());
        assert!(fs.find("/assetsx/y").is_none());
    }

    #[test]
    fn a_missing_root_names_its_key() {
        let e = FrontStatic::new(&[StaticConfig {
            prefix: "/s".into(),
            root: "/no/such/dir".into(),
            expires: None,
            precompressed: false,
        }])
        .unwrap_err();
        assert!(e.starts_with("static[0].root: /no/such/dir"), "{e}");
    }
}
