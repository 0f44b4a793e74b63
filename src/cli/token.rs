//! Tokens on the command line: the key flags `serve` and `token create` share, building the
//! server's [`Auth`] from them, and `flightdeck token create`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::auth::{Action, Auth, Signer, TokenRequest, Verifier, secret};

use super::CliError;
use super::args::DatabaseArgs;

/// Where the token keys are. Shared by `serve` (to check tokens) and `token create` (to sign).
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// The HMAC (HS256) secret's file. Created with a random secret on first use; default
    /// `<data-dir>/auth-secret`.
    #[arg(long, env = "FLIGHTDECK_AUTH_SECRET_FILE", value_name = "PATH")]
    pub auth_secret_file: Option<PathBuf>,
    /// The HMAC secret itself (at least 32 bytes), instead of the file.
    #[arg(long, env = "FLIGHTDECK_AUTH_SECRET", hide_env_values = true, value_name = "TEXT")]
    pub auth_secret: Option<String>,
    /// Also accept tokens signed with the private half of this PEM public key (RS256 for RSA,
    /// ES256 for EC P-256). Repeatable; comma-separated in the environment.
    #[arg(long = "auth-public-key", env = "FLIGHTDECK_AUTH_PUBLIC_KEYS", value_delimiter = ',', value_name = "PEM")]
    pub public_keys: Vec<PathBuf>,
}

impl AuthArgs {
    /// The HMAC secret: given, or read from (or created in) its file.
    fn secret(&self, db: &DatabaseArgs) -> Result<Vec<u8>, CliError> {
        if let Some(text) = &self.auth_secret {
            return secret::from_text(text).map_err(auth_error);
        }
        let path = self.auth_secret_file.clone().unwrap_or_else(|| default_secret_file(&db.data_dir));
        secret::load_or_create(&path).map_err(auth_error)
    }

    /// The server's policy: tokens signed with the secret or a configured public key.
    pub fn auth(&self, db: &DatabaseArgs) -> Result<Auth, CliError> {
        let secret = self.secret(db)?;
        let mut verifier = Verifier::new().with_secret(&secret);
        for path in &self.public_keys {
            let pem = std::fs::read(path)
                .map_err(|e| CliError::Usage(format!("--auth-public-key {}: {e}", path.display())))?;
            verifier = verifier
                .with_public_key_pem(&pem)
                .map_err(|e| CliError::Usage(format!("--auth-public-key {}: {e}", path.display())))?;
        }
        Ok(Auth::tokens(verifier, Some(Signer::hs256(&secret))))
    }
}

/// Where a zero-config server keeps its secret.
pub fn default_secret_file(data_dir: &Path) -> PathBuf {
    data_dir.join("auth-secret")
}

/// `flightdeck token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new signed token (or, with --login, a one-time dashboard login link).
    Create(TokenCreateArgs),
}

/// `flightdeck token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// A site the token covers (repeatable); `*` for every site.
    #[arg(long = "site", value_name = "SITE", required = true)]
    pub sites: Vec<String>,
    /// Allow reading: live streams, event and stream reads, stats, the dashboard.
    #[arg(long)]
    pub subscribe: bool,
    /// Allow writing events (`POST /api/events`).
    #[arg(long)]
    pub publish: bool,
    /// Print a one-time dashboard login link instead of a token.
    #[arg(long, conflicts_with_all = ["subscribe", "publish"])]
    pub login: bool,
    /// Only these event types (repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only streams whose name starts with this prefix (repeatable).
    #[arg(long = "stream-prefix", value_name = "PREFIX")]
    pub streams: Vec<String>,
    /// How long the token lasts: e.g. 90s, 15m, 12h, 30d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Who the token is for (shown in the server's logs).
    #[arg(long)]
    pub subject: Option<String>,
    /// Sign with this PEM private key (RS256/ES256) instead of the server's secret.
    #[arg(long, value_name = "PEM")]
    pub private_key: Option<PathBuf>,
    /// The server's address, for the login link.
    #[arg(long, env = "FLIGHTDECK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The keys.
    #[command(flatten)]
    pub keys: AuthArgs,
}

/// `flightdeck token create`: prints the token (or login link) on stdout.
pub fn create(db: &DatabaseArgs, args: &TokenCreateArgs) -> Result<(), CliError> {
    let actions = match (args.login, args.subscribe, args.publish) {
        (true, _, _) => vec![Action::Login],
        (false, false, false) => {
            return Err(CliError::Usage("say what the token allows: --subscribe, --publish, or both".into()));
        }
        (false, subscribe, publish) => {
            let mut actions = Vec::new();
            if subscribe {
                actions.push(Action::Subscribe);
            }
            if publish {
                actions.push(Action::Publish);
            }
            actions
        }
    };
    for site in &args.sites {
        if site != "*" && !crate::tracker::is_token(site) {
            return Err(CliError::Usage(format!(
                "--site {site:?}: a site id is 1–64 of A-Z a-z 0-9 _ - (or * for every site)"
            )));
        }
    }
    let signer = match &args.private_key {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| CliError::Usage(format!("--private-key {}: {e}", path.display())))?;
            Signer::from_private_key_pem(&pem)
                .map_err(|e| CliError::Usage(format!("--private-key {}: {e}", path.display())))?
        }
        None => Signer::hs256(&args.keys.secret(db)?),
    };
    let request = TokenRequest {
        sites: args.sites.clone(),
        actions,
        types: Some(args.types.clone()).filter(|t| !t.is_empty()),
        streams: Some(args.streams.clone()).filter(|s| !s.is_empty()),
        ttl: args.ttl,
        subject: args.subject.clone(),
    };
    let token = signer.sign(&request.claims()).map_err(auth_error)?;
    if args.login {
        println!("{}/login?token={token}", args.url.trim_end_matches('/'));
    } else {
        println!("{token}");
    }
    Ok(())
}

/// `90s`, `15m`, `12h`, `30d`, or plain seconds.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 12h or 30d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    match n.checked_mul(unit_secs) {
        Some(0) => Err("the ttl must be more than zero".into()),
        Some(secs) if secs <= 366 * 86_400 => Ok(Duration::from_secs(secs)),
        _ => Err("the ttl must be at most a year (366d)".into()),
    }
}

fn auth_error(err: crate::auth::AuthError) -> CliError {
    CliError::Usage(err.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_units_and_are_bounded() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_ttl("30d"), Ok(Duration::from_secs(2_592_000)));
        assert_eq!(parse_ttl("5"), Ok(Duration::from_secs(5)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("400d").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("99999999999999999999d").is_err());
    }
}
