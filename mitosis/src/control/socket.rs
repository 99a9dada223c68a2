//! Where the control socket lives, and who may use it: the path's checks
//! at start, and the peer's uid on each connection.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// `$XDG_RUNTIME_DIR/<name>.control`; for root without
/// `XDG_RUNTIME_DIR` (a system service), `/run/<name>.control`; else
/// `/run/user/<uid>/<name>.control` when that directory exists.
pub(super) fn default_path(name: &str) -> Result<PathBuf, Error> {
    let failed = |reason: String| Error::Control {
        action: format!("choose a path for the control socket of {name:?}"),
        reason,
    };
    if name.is_empty() || name.contains(['/', '\0']) || name == "." || name == ".." {
        return Err(failed(
            "the name must be a file name: not empty, without '/'".into(),
        ));
    }
    let file = format!("{name}.control");
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && dir.is_absolute()
    {
        return Ok(dir.join(file));
    }
    let uid = rustix::process::getuid();
    if uid.is_root() {
        return Ok(Path::new("/run").join(file));
    }
    let user_dir = PathBuf::from(format!("/run/user/{}", uid.as_raw()));
    if user_dir.is_dir() {
        return Ok(user_dir.join(file));
    }
    Err(failed(format!(
        "XDG_RUNTIME_DIR is unset and {} does not exist; give the socket a path in a \
         directory that only this user can write",
        user_dir.display()
    )))
}

/// Binds the listening socket at `path`, mode 0600, after checking that
/// nobody else can replace it: its directory must be writable by its owner
/// alone, and owned by this user or root. A socket left behind by a
/// program that is gone is replaced; one that a live program listens on is
/// not.
pub(super) fn bind(path: &Path) -> Result<UnixListener, Error> {
    let failed = |reason: String| Error::Control {
        action: format!("set up the control socket at {}", path.display()),
        reason,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let meta = std::fs::metadata(&dir)
        .map_err(|error| failed(format!("its directory {}: {error}", dir.display())))?;
    if !meta.is_dir() {
        return Err(failed(format!("{} is not a directory", dir.display())));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(failed(format!(
            "its directory {} is writable by others (mode {:o}), so anyone could put their \
             own socket there; use a directory only its owner can write, such as \
             $XDG_RUNTIME_DIR",
            dir.display(),
            mode & 0o7777
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(failed(format!(
            "its directory {} belongs to uid {}, neither this user (uid {me}) nor root",
            dir.display(),
            meta.uid()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(existing) if existing.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(live) => {
                return Err(failed(format!(
                    "a running program ({}) listens there already; stop it, or upgrade it \
                     through this socket",
                    who_listens(live)
                )));
            }
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                log::info!(
                    "mitosis: replacing the control socket {} that a program which is gone \
                     left behind",
                    path.display()
                );
                std::fs::remove_file(path)
                    .map_err(|error| failed(format!("removing the stale socket: {error}")))?;
            }
            Err(error) => return Err(failed(format!("checking the existing socket: {error}"))),
        },
        Ok(_) => {
            return Err(failed(
                "something that is not a socket is there; refusing to replace it".into(),
            ));
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(failed(error.to_string())),
    }
    let listener = UnixListener::bind(path).map_err(|error| failed(error.to_string()))?;
    // Connecting needs write permission on the socket file: 0600 keeps
    // out every other user but root. The peer check covers the moment
    // between bind and chmod.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|error| failed(format!("making it 0600: {error}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|error| failed(error.to_string()))?;
    Ok(listener)
}

/// Names the program that serves a live socket: its status says which pid
/// serves now. The kernel's `SO_PEERCRED` names only the process that
/// first listened, which upgrades have replaced since.
fn who_listens(mut live: UnixStream) -> String {
    use std::io::{Read, Write};
    let serving = (|| {
        live.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .ok()?;
        live.write_all(b"status\n").ok()?;
        let mut text = String::new();
        live.take(64 * 1024).read_to_string(&mut text).ok()?;
        let answer: super::Answer = text.parse().ok()?;
        answer.field("pid").map(|pid| format!("pid {pid}"))
    })();
    serving.unwrap_or_else(|| "it does not say which pid; it may be busy".into())
}

/// The uid of the process at the other end of `stream`, as the kernel
/// recorded it when it connected.
pub(super) fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    crate::fd_channel::peer_credentials(stream.as_fd()).map(|peer| peer.uid)
}
