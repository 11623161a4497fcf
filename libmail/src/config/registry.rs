//! The parameter registry: every main.cf parameter name Facteur knows, with
//! its type, default and meaning.
//!
//! The data lives in `params.tsv` beside this file — one line a parameter,
//! so `postconf -d`, `postconf -n`, `facteur check` and the docs all read one
//! list. It holds every parameter of Postfix 3.7 with Postfix's default, so
//! a Postfix `main.cf` produces no false "unused parameter" warnings; the
//! ones Facteur acts on carry a type (checked by `facteur check`) and a
//! meaning, the others the type `-` ("accepted, not used yet").
//!
//! Service-derived names (`smtp_destination_concurrency_limit` and the rest
//! for every delivery service in master.cf) are not listed: they follow from
//! master.cf, see [`service_parameters`].

use std::collections::HashMap;
use std::sync::OnceLock;

const DATA: &str = include_str!("params.tsv");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
}

impl TimeUnit {
    pub fn from_char(c: char) -> Option<TimeUnit> {
        Some(match c {
            's' => TimeUnit::Second,
            'm' => TimeUnit::Minute,
            'h' => TimeUnit::Hour,
            'd' => TimeUnit::Day,
            'w' => TimeUnit::Week,
            _ => return None,
        })
    }

    pub fn seconds(self) -> u64 {
        match self {
            TimeUnit::Second => 1,
            TimeUnit::Minute => 60,
            TimeUnit::Hour => 3600,
            TimeUnit::Day => 86400,
            TimeUnit::Week => 604800,
        }
    }
}

/// What values a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// `yes` or `no`, any case.
    Bool,
    /// A 32-bit integer within bounds.
    Int { min: i64, max: i64 },
    /// A 64-bit integer within bounds (sizes in bytes).
    Long { min: i64, max: i64 },
    /// A number with an optional unit letter; `unit` is the default unit.
    Time { unit: TimeUnit, min: u64 },
    /// Free text.
    Str,
    /// A list separated by commas and/or whitespace, `{ }` grouping.
    List,
    /// A list of `type:name` lookup tables.
    Maps,
    /// Text expanded per use (per delivery or session), not at load.
    Raw,
    /// A Postfix parameter Facteur accepts and shows but does not act on.
    Unused,
}

/// One registered parameter.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: &'static str,
    pub kind: ParamType,
    /// The default as `postconf -d` shows it; `@name` = computed (host.rs).
    pub default: &'static str,
    pub meaning: &'static str,
    /// Expanded per use (per delivery, per session), never by
    /// `postconf -x`: Postfix's "raw" parameters.
    pub raw: bool,
}

impl Param {
    /// Whether Facteur acts on this parameter (as opposed to accepting it).
    pub fn supported(&self) -> bool {
        self.kind != ParamType::Unused
    }

    /// The name of the computed default (`myhostname` for `@myhostname`).
    pub fn computed_default(&self) -> Option<&'static str> {
        self.default.strip_prefix('@')
    }
}

struct Registry {
    params: Vec<Param>,
    index: HashMap<&'static str, usize>,
}

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        let params: Vec<Param> = DATA
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| parse_line(l).unwrap_or_else(|e| panic!("params.tsv: {e}: {l:?}")))
            .collect();
        let index = params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name, i))
            .collect();
        Registry { params, index }
    })
}

fn parse_line(line: &'static str) -> Result<Param, String> {
    let mut cols = line.splitn(4, '\t');
    let name = cols.next().ok_or("no name")?;
    let type_text = cols.next().ok_or("no type")?;
    let raw = type_text == "raw" || type_text == "-raw";
    let kind = match type_text {
        "-raw" => ParamType::Unused,
        t => parse_type(t)?,
    };
    let default = cols.next().ok_or("no default")?;
    let meaning = cols.next().unwrap_or("");
    Ok(Param {
        name,
        kind,
        default,
        meaning,
        raw,
    })
}

fn parse_type(s: &str) -> Result<ParamType, String> {
    let mut parts = s.split(':');
    let head = parts.next().unwrap_or("");
    let num = |p: Option<&str>, dflt: i64| -> Result<i64, String> {
        match p {
            None | Some("") => Ok(dflt),
            Some(x) => x.parse().map_err(|_| format!("bad bound {x}")),
        }
    };
    Ok(match head {
        "bool" => ParamType::Bool,
        "int" => ParamType::Int {
            min: num(parts.next(), i32::MIN as i64)?,
            max: num(parts.next(), i32::MAX as i64)?,
        },
        "long" => ParamType::Long {
            min: num(parts.next(), i64::MIN)?,
            max: num(parts.next(), i64::MAX)?,
        },
        "time" => {
            let unit = parts
                .next()
                .and_then(|u| u.chars().next())
                .and_then(TimeUnit::from_char)
                .ok_or("time needs a unit")?;
            ParamType::Time {
                unit,
                min: num(parts.next(), 0)? as u64,
            }
        }
        "str" => ParamType::Str,
        "list" => ParamType::List,
        "maps" => ParamType::Maps,
        "raw" => ParamType::Raw,
        "-" => ParamType::Unused,
        other => return Err(format!("unknown type {other}")),
    })
}

/// The registered parameter `name`, if any.
pub fn lookup(name: &str) -> Option<&'static Param> {
    let r = registry();
    r.index.get(name).map(|&i| &r.params[i])
}

/// Every registered parameter, sorted by name.
pub fn all() -> &'static [Param] {
    &registry().params
}

/// The suffixes of per-service parameters, with the parameter each falls
/// back to. A master.cf service `X` whose program is a delivery agent gets
/// `X_SUFFIX = $FALLBACK` for each row (postconf's class "service").
pub const SERVICE_PARAMETERS: &[(&str, &str)] = &[
    ("delivery_slot_cost", "default_delivery_slot_cost"),
    ("delivery_slot_discount", "default_delivery_slot_discount"),
    ("delivery_slot_loan", "default_delivery_slot_loan"),
    (
        "destination_concurrency_failed_cohort_limit",
        "default_destination_concurrency_failed_cohort_limit",
    ),
    (
        "destination_concurrency_limit",
        "default_destination_concurrency_limit",
    ),
    (
        "destination_concurrency_negative_feedback",
        "default_destination_concurrency_negative_feedback",
    ),
    (
        "destination_concurrency_positive_feedback",
        "default_destination_concurrency_positive_feedback",
    ),
    ("destination_rate_delay", "default_destination_rate_delay"),
    (
        "destination_recipient_limit",
        "default_destination_recipient_limit",
    ),
    ("extra_recipient_limit", "default_extra_recipient_limit"),
    (
        "initial_destination_concurrency",
        "initial_destination_concurrency",
    ),
    ("minimum_delivery_slots", "default_minimum_delivery_slots"),
    ("recipient_limit", "default_recipient_limit"),
    ("recipient_refill_delay", "default_recipient_refill_delay"),
    ("recipient_refill_limit", "default_recipient_refill_limit"),
    ("transport_rate_delay", "default_transport_rate_delay"),
];

/// Programs whose services are delivery transports (get the rows above).
pub const DELIVERY_PROGRAMS: &[&str] = &["smtp", "lmtp", "local", "virtual", "error", "pipe"];

/// Programs that run external commands (get `X_time_limit`).
pub const COMMAND_PROGRAMS: &[&str] = &["pipe", "spawn"];

/// The per-service parameters (name, default) that a master.cf service
/// named `service` running `program` brings, leaving out names that are
/// already registered (e.g. `local_destination_recipient_limit`).
pub fn service_parameters(service: &str, program: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if DELIVERY_PROGRAMS.contains(&program) {
        for (suffix, fallback) in SERVICE_PARAMETERS {
            out.push((format!("{service}_{suffix}"), format!("${fallback}")));
        }
    }
    if COMMAND_PROGRAMS.contains(&program) {
        out.push((
            format!("{service}_time_limit"),
            "$command_time_limit".into(),
        ));
    }
    out.retain(|(n, _)| lookup(n).is_none());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_parses_and_is_sorted_and_unique() {
        let all = all();
        assert!(all.len() > 800, "{}", all.len());
        for w in all.windows(2) {
            assert!(w[0].name < w[1].name, "{} !< {}", w[0].name, w[1].name);
        }
    }

    #[test]
    fn supported_parameters_have_meanings() {
        let supported: Vec<_> = all().iter().filter(|p| p.supported()).collect();
        assert!(supported.len() >= 150, "{}", supported.len());
        for p in supported {
            assert!(!p.meaning.is_empty(), "{} has no meaning", p.name);
        }
    }

    #[test]
    fn known_defaults() {
        assert_eq!(lookup("message_size_limit").unwrap().default, "10240000");
        assert_eq!(lookup("myorigin").unwrap().default, "$myhostname");
        assert_eq!(
            lookup("myhostname").unwrap().computed_default(),
            Some("myhostname")
        );
        assert_eq!(lookup("biff").unwrap().kind, ParamType::Bool);
        assert!(lookup("no_such_thing").is_none());
        assert!(lookup("mailbox_command").unwrap().raw);
        assert!(lookup("postscreen_reject_footer").unwrap().raw);
        assert!(!lookup("relayhost").unwrap().raw);
    }

    #[test]
    fn service_parameters_skip_registered_names() {
        let local = service_parameters("local", "local");
        assert!(!local
            .iter()
            .any(|(n, _)| n == "local_destination_recipient_limit"));
        assert_eq!(local.len(), 14);
        assert_eq!(service_parameters("maildrop", "pipe").len(), 17);
        assert_eq!(service_parameters("foo", "spawn").len(), 1);
        assert!(service_parameters("cleanup", "cleanup").is_empty());
    }
}

#[cfg(test)]
mod doc_tests {
    /// docs/compatibility.md must list every typed parameter (run
    /// scripts/gen-compat-params.py after changing params.tsv).
    #[test]
    fn registry_is_documented() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/compatibility.md"
        ))
        .expect("docs/compatibility.md");
        let missing: Vec<&str> = super::all()
            .iter()
            .filter(|p| p.supported())
            .filter(|p| !doc.contains(&format!("| `{}` |", p.name)))
            .map(|p| p.name)
            .collect();
        assert!(
            missing.is_empty(),
            "not in docs/compatibility.md (run scripts/gen-compat-params.py): {missing:?}"
        );
    }
}
