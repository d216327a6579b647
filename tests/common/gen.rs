//! Realistic audit events for tests, benchmarks and the demo: server-log lines of about
//! 600 bytes over 500 organizations, 5,000 actors and 40 actions, deterministic per seed.

#![allow(dead_code)]

pub const ACTIONS: [&str; 40] = [
    "startWorkspace",
    "stopWorkspace",
    "deleteWorkspace",
    "getWorkspace",
    "getWorkspaces",
    "createWorkspace",
    "setWorkspaceTimeout",
    "getTeamProjects",
    "getTeamMembers",
    "setTeamMemberRole",
    "removeTeamMember",
    "createTeam",
    "deleteTeam",
    "updateOrgSettings",
    "getOrgSettings",
    "createProject",
    "deleteProject",
    "updateProjectSettings",
    "getProjectEnvironmentVariables",
    "setProjectEnvironmentVariable",
    "deleteProjectEnvironmentVariable",
    "getGitpodTokens",
    "generateNewGitpodToken",
    "deleteGitpodToken",
    "getSSHPublicKeys",
    "addSSHPublicKey",
    "deleteSSHPublicKey",
    "gitpod.v1.WorkspaceService/startWorkspace",
    "gitpod.v1.WorkspaceService/stopWorkspace",
    "gitpod.v1.WorkspaceService/deleteWorkspace",
    "gitpod.v1.WorkspaceService/listWorkspaces",
    "gitpod.v1.OrganizationService/updateOrganizationSettings",
    "gitpod.v1.OrganizationService/listOrganizationMembers",
    "gitpod.v1.OrganizationService/setRole",
    "gitpod.v1.AuditLogService/listAuditLogs",
    "gitpod.v1.ConfigurationService/createConfiguration",
    "gitpod.v1.ConfigurationService/deleteConfiguration",
    "gitpod.v1.SCMService/searchRepositories",
    "gitpod.v1.EnvironmentVariableService/createUserEnvironmentVariable",
    "gitpod.v1.UserService/getAuthenticatedUser",
];

/// A small deterministic generator (SplitMix64), so tests need no extra crate.
#[derive(Clone)]
pub struct Gen {
    state: u64,
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A random UUID v4.
    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        uuid_from(a, b)
    }
}

fn uuid_from(a: u64, b: u64) -> String {
    let a = (a & !0xF000) | 0x4000;
    let b = (b & !(0xC << 60)) | (0x8 << 60);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

/// The stable id of organization `i` (0..500) or actor `i` (0..5000).
pub fn org_id(i: u64) -> String {
    uuid_from(0x0a00_0000_0000_0000 | i, 0x0a00 ^ i.wrapping_mul(0x9E37))
}
pub fn actor_id(i: u64) -> String {
    uuid_from(0x0b00_0000_0000_0000 | i, 0x0b00 ^ i.wrapping_mul(0x7F4A))
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms.rem_euclid(1000)
    )
}

/// One generated audit event: its id and its line.
pub struct Sample {
    pub id: String,
    pub org: String,
    pub line: String,
}

/// A bare event (API field names, `args` as an array).
pub fn event_json(g: &mut Gen, ms: i64) -> Sample {
    let id = g.uuid();
    let org = org_id(g.below(500));
    let actor = actor_id(g.below(5000));
    let action = ACTIONS[g.below(40) as usize];
    let ws = g.uuid();
    let line = format!(
        r#"{{"id":"{id}","timestamp":"{}","action":"{action}","organizationId":"{org}","actorId":"{actor}","args":["{org}",{{"workspaceId":"{ws}","reason":"user request"}}]}}"#,
        rfc3339(ms)
    );
    Sample { id, org, line }
}

/// A server log line wrapping an event (~600 bytes).
pub fn server_line(g: &mut Gen, ms: i64) -> Sample {
    let ev = event_json(g, ms);
    let req = g.uuid();
    let trace = g.next_u64();
    let line = format!(
        r#"{{"component":"server","severity":"INFO","time":"{}","context":{{"requestId":"{req}","requestKind":"jsonrpc","requestMethod":"audit","traceId":"{trace:016x}{trace:016x}","userId":"{}"}},"message":"audit","payload":{}}}"#,
        rfc3339(ms),
        actor_id(g.below(5000)),
        ev.line
    );
    Sample {
        id: ev.id,
        org: ev.org,
        line,
    }
}

/// An ordinary (non-audit) server log line.
pub fn noise_line(g: &mut Gen, ms: i64) -> String {
    format!(
        r#"{{"component":"server","severity":"INFO","time":"{}","message":"workspace instance heartbeat","payload":{{"instanceId":"{}"}}}}"#,
        rfc3339(ms),
        g.uuid()
    )
}
