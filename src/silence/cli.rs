//! `qos-sentinel silence add|list|expire` against a running daemon's HTTP API.

use clap::Subcommand;

use super::{Request, Silence};
use crate::time::{Millis, format_ms, now_ms};

const URL: &str = "http://127.0.0.1:9464";

#[derive(Subcommand, Debug)]
pub enum SilenceCommand {
    /// Silence incidents whose scope matches every --matcher, for --duration or until --end.
    Add {
        /// Scope pattern (repeat for several, all must match): cdn=cdn-a, location=IN/*.
        #[arg(long = "matcher", required = true)]
        matchers: Vec<String>,
        /// Start: RFC 3339 or epoch ms; default now (a maintenance window may start later).
        #[arg(long)]
        start: Option<String>,
        /// End: RFC 3339 or epoch ms.
        #[arg(long, conflicts_with = "duration")]
        end: Option<String>,
        /// How long from the start: 2h, 30m.
        #[arg(long)]
        duration: Option<String>,
        /// Who asks.
        #[arg(long)]
        by: String,
        /// Why.
        #[arg(long)]
        comment: String,
        #[arg(long, default_value = URL)]
        url: String,
        /// The daemon's http.token.
        #[arg(long, env = "QOS_SENTINEL_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// The silences the daemon knows (--all: the expired too).
    List {
        #[arg(long, default_value = URL)]
        url: String,
        #[arg(long)]
        all: bool,
    },
    /// End a silence now.
    Expire {
        id: String,
        #[arg(long, default_value = URL)]
        url: String,
        #[arg(long, env = "QOS_SENTINEL_TOKEN", hide_env_values = true)]
        token: String,
    },
}

#[derive(serde::Deserialize)]
struct Listed {
    silences: Vec<Silence>,
}

fn endpoint(url: &str, path: &str) -> String {
    format!("{}/api/silences{path}", url.trim_end_matches('/'))
}

async fn answer(r: Result<reqwest::Response, reqwest::Error>, at: &str) -> anyhow::Result<String> {
    let r = r.map_err(|e| anyhow::anyhow!("cannot reach {at}: {e}"))?;
    let status = r.status();
    let text = r.text().await?;
    anyhow::ensure!(status.is_success(), "{at}: {status}: {}", text.trim());
    Ok(text)
}

fn line(s: &Silence, now: Millis) -> String {
    format!(
        "{} {:<8} {} .. {} {} by {}: {}",
        s.id,
        s.state(now),
        format_ms(s.starts_at),
        format_ms(s.ends_at),
        s.matchers.join(" and "),
        s.created_by,
        s.comment
    )
}

pub async fn run(command: SilenceCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    match command {
        SilenceCommand::Add {
            matchers,
            start,
            end,
            duration,
            by,
            comment,
            url,
            token,
        } => {
            let req = Request {
                matchers,
                starts_at: start,
                ends_at: end,
                duration,
                created_by: by,
                comment,
            };
            let at = endpoint(&url, "");
            let sent = client.post(&at).bearer_auth(token).json(&req).send().await;
            let s: Silence = serde_json::from_str(&answer(sent, &at).await?)?;
            println!("{}", line(&s, now_ms()));
        }
        SilenceCommand::List { url, all } => {
            let at = endpoint(&url, "");
            let listed: Listed =
                serde_json::from_str(&answer(client.get(&at).send().await, &at).await?)?;
            let now = now_ms();
            for s in listed.silences.iter().filter(|s| all || s.ends_at > now) {
                println!("{}", line(s, now));
            }
        }
        SilenceCommand::Expire { id, url, token } => {
            let at = endpoint(&url, &format!("/{id}"));
            let sent = client.delete(&at).bearer_auth(token).send().await;
            let s: Silence = serde_json::from_str(&answer(sent, &at).await?)?;
            println!("{}", line(&s, now_ms()));
        }
    }
    Ok(())
}
