//! The HMAC secret a zero-config server signs and checks its tokens with, kept in a file in the
//! data directory so that tokens survive restarts and `flightdeck token create` (another process)
//! signs with the same secret.
//!
//! Created on first use with 32 random bytes from the operating system, written hex-encoded with
//! mode 0600 through a temporary file and a rename, so a crash never leaves half a secret and two
//! processes racing to create it agree on one.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use super::error::AuthError;

/// Shortest secret accepted from a file or the environment (HS256 wants at least 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// Reads the secret at `path`, creating it if it does not exist.
pub fn load_or_create(path: &Path) -> Result<Vec<u8>, AuthError> {
    match fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(err) => Err(file_error(path, err)),
    }
}

/// Reads the secret at `path`, which must exist.
pub fn load(path: &Path) -> Result<Vec<u8>, AuthError> {
    let text = fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    parse(path, &text)
}

/// A secret given as text (`FLIGHTDECK_AUTH_SECRET`): used as its bytes.
pub fn from_text(text: &str) -> Result<Vec<u8>, AuthError> {
    let bytes = text.trim().as_bytes().to_vec();
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(AuthError::BadKey(format!("the secret must be at least {MIN_SECRET_BYTES} bytes long")));
    }
    Ok(bytes)
}

fn parse(path: &Path, text: &str) -> Result<Vec<u8>, AuthError> {
    let secret = text.trim().as_bytes().to_vec();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthError::SecretFile {
            path: path.display().to_string(),
            message: format!("shorter than {MIN_SECRET_BYTES} bytes; delete it to have a new one generated"),
        });
    }
    Ok(secret)
}

fn create(path: &Path) -> Result<Vec<u8>, AuthError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| file_error(path, e))?;
    }
    let bytes: [u8; 32] = rand::random();
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(|e| file_error(&tmp, e))?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| file_error(&tmp, e))?;
    drop(file);
    // Another process may have created the file meanwhile: keep the first, so both agree.
    match fs::hard_link(&tmp, path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            return Err(file_error(path, err));
        }
    }
    let _ = fs::remove_file(&tmp);
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| file_error(path, e))?;
    load(path)
}

fn file_error(path: &Path, err: std::io::Error) -> AuthError {
    AuthError::SecretFile { path: path.display().to_string(), message: err.to_string() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth/secret");
        let first = load_or_create(&path).unwrap();
        assert_eq!(first.len(), 64, "32 bytes, hex");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), first);
        fs::write(&path, "short").unwrap();
        assert!(matches!(load(&path), Err(AuthError::SecretFile { .. })));
        assert!(from_text("too short").is_err());
    }
}
