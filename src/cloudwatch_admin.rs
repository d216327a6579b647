//! `audit-relay cloudwatch install-queries`: the saved Logs Insights queries of
//! `deploy/cloudwatch/queries/` (built into the binary) put in the account as query
//! definitions scoped to `cloudwatch.log_group`, named `<prefix><file stem>`.
//!
//! Idempotent: the definitions already there under the prefix are listed first
//! (DescribeQueryDefinitions, every page) and a query of the same name is updated in
//! place (PutQueryDefinition with its id), one whose text and log groups are already
//! the same is left alone, and only a missing one is created.

use crate::config::CloudWatchConfig;
use crate::forward::cloudwatch::CloudWatch;
use aws_sdk_cloudwatchlogs::error::DisplayErrorContext;
use std::collections::BTreeMap;

/// The queries shipped with this build: `(file stem, file text)`.
pub const QUERIES: [(&str, &str); 7] = [
    (
        "actor-actions",
        include_str!("../deploy/cloudwatch/queries/actor-actions.query"),
    ),
    (
        "organization-member-changes",
        include_str!("../deploy/cloudwatch/queries/organization-member-changes.query"),
    ),
    (
        "workspace-deletions",
        include_str!("../deploy/cloudwatch/queries/workspace-deletions.query"),
    ),
    (
        "audit-log-reads",
        include_str!("../deploy/cloudwatch/queries/audit-log-reads.query"),
    ),
    (
        "duplicates-by-id",
        include_str!("../deploy/cloudwatch/queries/duplicates-by-id.query"),
    ),
    (
        "events-per-action-per-hour",
        include_str!("../deploy/cloudwatch/queries/events-per-action-per-hour.query"),
    ),
    (
        "checkpoints",
        include_str!("../deploy/cloudwatch/queries/checkpoints.query"),
    ),
];

/// The default name prefix: a folder of the console's saved queries.
pub const DEFAULT_PREFIX: &str = "audit-relay/";

/// The query text CloudWatch gets: the file without its leading `#` comment lines.
pub fn query_body(file: &str) -> String {
    file.lines()
        .skip_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_string()
}

/// What happened to one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    Created,
    Updated,
    Unchanged,
}

impl std::fmt::Display for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Installed::Created => "created",
            Installed::Updated => "updated",
            Installed::Unchanged => "unchanged",
        })
    }
}

struct Existing {
    id: String,
    query: String,
    groups: Vec<String>,
}

/// Puts every query of [`QUERIES`] in the account; returns each full name with what
/// was done. Stops at the first call CloudWatch refuses, naming it.
pub async fn install_queries(
    cfg: &CloudWatchConfig,
    prefix: &str,
) -> Result<Vec<(String, Installed)>, String> {
    let cw = CloudWatch::connect(cfg, String::new()).await?;
    let client = cw.client();
    let mut existing: BTreeMap<String, Existing> = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .describe_query_definitions()
            .query_definition_name_prefix(prefix)
            .max_results(1000)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| format!("DescribeQueryDefinitions: {}", DisplayErrorContext(&e)))?;
        for d in page.query_definitions() {
            if let (Some(name), Some(id)) = (d.name(), d.query_definition_id()) {
                existing.insert(
                    name.to_string(),
                    Existing {
                        id: id.to_string(),
                        query: d.query_string().unwrap_or_default().to_string(),
                        groups: d.log_group_names().to_vec(),
                    },
                );
            }
        }
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let groups = vec![cfg.log_group.clone()];
    let mut out = Vec::new();
    for (stem, file) in QUERIES {
        let name = format!("{prefix}{stem}");
        let body = query_body(file);
        let old = existing.get(&name);
        if old.is_some_and(|o| o.query == body && o.groups == groups) {
            out.push((name, Installed::Unchanged));
            continue;
        }
        client
            .put_query_definition()
            .name(&name)
            .set_query_definition_id(old.map(|o| o.id.clone()))
            .query_string(&body)
            .set_log_group_names(Some(groups.clone()))
            .send()
            .await
            .map_err(|e| format!("PutQueryDefinition {name}: {}", DisplayErrorContext(&e)))?;
        let what = if old.is_some() {
            Installed::Updated
        } else {
            Installed::Created
        };
        tracing::info!(query = %name, %what, "query definition installed");
        out.push((name, what));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_leaves_out_the_comment_header_only() {
        let b = query_body("# about\n# more\n\nfields a\n| filter b = \"#x\"\n");
        assert_eq!(b, "fields a\n| filter b = \"#x\"");
        for (stem, file) in QUERIES {
            let b = query_body(file);
            assert!(!b.is_empty() && !b.contains("\n#"), "{stem}: {b}");
            assert!(file.starts_with('#'), "{stem} explains itself first");
        }
    }
}
