//! The effective parameter set: overrides over main.cf over defaults.
//!
//! [`Params`] answers "what is the value of `name`" for every program. A
//! value's precedence is Postfix's: a `-o name=value` override (master.cf
//! or the command line), else main.cf, else the default — from the registry,
//! computed from the host ([`super::host`]), or derived from a master.cf
//! service (`smtp_destination_concurrency_limit = $default_...`).
//!
//! Values are stored unexpanded; [`Params::value`] expands on demand, so a
//! value always sees the final definition of every name it refers to, in
//! any order in the file.
//!
//! It also classifies names the way `postconf` does: built-in (in the
//! registry), service (derived from master.cf), user-defined (set in main.cf
//! and referenced as `$name` by a known parameter, or named in
//! `smtpd_restriction_classes`), or unused (set but none of these).

use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};

use super::expand::{ExpandError, Expansion, Lookup};
use super::host::{self, InterfaceAddr};
use super::maincf::MainCf;
use super::registry::{self, Param};

/// How `postconf` classifies a parameter name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Builtin,
    Service,
    User,
}

pub struct Params {
    pub config_dir: String,
    pub main: MainCf,
    /// Ignore main.cf and overrides: every value is the built-in default
    /// (`postconf -d`).
    defaults_only: bool,
    overrides: HashMap<String, String>,
    /// Values outside main.cf whose `$name` references make names
    /// user-defined (master.cf `-o` values).
    reference_sources: Vec<String>,
    /// Service-derived parameters and their defaults.
    services: BTreeMap<String, String>,
    /// User-defined names (see module doc), computed on first use.
    user: OnceCell<HashSet<String>>,
    system_hostname: OnceCell<String>,
    interfaces: OnceCell<Vec<InterfaceAddr>>,
    /// Computed defaults being evaluated (guards against
    /// `mydomain = $myhostname` on a host whose name has no dot).
    computing: RefCell<Vec<&'static str>>,
    /// Problems met while computing defaults (e.g. a bad
    /// `mynetworks_style`), reported by [`Params::problems`].
    problems: RefCell<Vec<String>>,
}

impl Params {
    pub fn new(config_dir: &str, main: MainCf) -> Params {
        Params {
            config_dir: config_dir.to_string(),
            main,
            defaults_only: false,
            overrides: HashMap::new(),
            reference_sources: Vec::new(),
            services: BTreeMap::new(),
            user: OnceCell::new(),
            system_hostname: OnceCell::new(),
            interfaces: OnceCell::new(),
            computing: RefCell::new(Vec::new()),
            problems: RefCell::new(Vec::new()),
        }
    }

    /// Read `DIR/main.cf` and build the parameter set, as every program but
    /// postconf does at start: the first error (unreadable file, malformed
    /// line) is returned; warnings are not (postconf and `facteur check`
    /// report those).
    pub fn load(config_dir: &str) -> Result<Params, super::Diagnostic> {
        let (main, diags) = MainCf::load(config_dir);
        if let Some(d) = diags
            .into_iter()
            .find(|d| d.severity == super::Severity::Error)
        {
            return Err(d);
        }
        Ok(Params::new(config_dir, main))
    }

    /// Only built-in defaults (`postconf -d`).
    pub fn defaults(config_dir: &str) -> Params {
        let mut p = Params::new(config_dir, MainCf::default());
        p.defaults_only = true;
        p
    }

    /// Use this host name instead of asking the system (tests).
    pub fn with_system_hostname(self, name: &str) -> Self {
        let _ = self.system_hostname.set(name.to_string());
        self
    }

    /// Use these interface addresses instead of asking the system (tests).
    pub fn with_interfaces(self, addrs: Vec<InterfaceAddr>) -> Self {
        let _ = self.interfaces.set(addrs);
        self
    }

    /// Add `-o name=value`; it wins over main.cf.
    pub fn set_override(&mut self, name: &str, value: &str) {
        self.overrides.insert(name.to_string(), value.to_string());
        self.user = OnceCell::new();
    }

    /// Register the master.cf services (name, program) so their derived
    /// parameters are known.
    pub fn add_services<'a>(&mut self, services: impl IntoIterator<Item = (&'a str, &'a str)>) {
        for (name, program) in services {
            for (pname, default) in registry::service_parameters(name, program) {
                self.services.entry(pname).or_insert(default);
            }
        }
        self.user = OnceCell::new();
    }

    /// Take in what master.cf contributes: its services' derived
    /// parameters and the `$name` references of its `-o` values.
    pub fn add_master(&mut self, master: &super::mastercf::MasterCf) {
        self.add_services(
            master
                .services
                .iter()
                .map(|s| (s.name.as_str(), s.command.as_str())),
        );
        self.add_reference_sources(
            master
                .services
                .iter()
                .flat_map(|s| s.overrides.iter().map(|(_, v)| v.clone())),
        );
    }

    /// Values (master.cf `-o` values) whose `$name` references count, like
    /// main.cf's, when deciding which names are user-defined.
    pub fn add_reference_sources(&mut self, values: impl IntoIterator<Item = String>) {
        self.reference_sources.extend(values);
        self.user = OnceCell::new();
    }

    pub fn is_defaults_only(&self) -> bool {
        self.defaults_only
    }

    /// The names of the service-derived parameters, sorted.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(|s| s.as_str())
    }

    /// How `postconf` classifies `name`, or `None` for an unknown name.
    pub fn class_of(&self, name: &str) -> Option<Class> {
        if registry::lookup(name).is_some() {
            Some(Class::Builtin)
        } else if self.services.contains_key(name) {
            Some(Class::Service)
        } else if self.user_defined().contains(name) {
            Some(Class::User)
        } else {
            None
        }
    }

    /// The set value of `name` (override or main.cf), unexpanded.
    pub fn explicit(&self, name: &str) -> Option<&str> {
        if self.defaults_only {
            return None;
        }
        if let Some(v) = self.overrides.get(name) {
            return Some(v);
        }
        self.main.get(name).map(|e| e.value.as_str())
    }

    /// The default of `name`, unexpanded (computed defaults are computed).
    pub fn default_raw(&self, name: &str) -> Option<String> {
        if let Some(p) = registry::lookup(name) {
            return Some(match p.computed_default() {
                Some(which) => self.compute_default(p, which),
                None => p.default.to_string(),
            });
        }
        self.services.get(name).cloned()
    }

    /// The value of `name` before expansion: explicit, else default. `None`
    /// for a name that is neither set nor known.
    pub fn raw(&self, name: &str) -> Option<String> {
        if let Some(v) = self.explicit(name) {
            return Some(v.to_string());
        }
        self.default_raw(name)
    }

    /// The fully expanded value of `name`. Raw parameters (see the
    /// registry) are expanded too: callers that must keep them raw use
    /// [`Params::raw`].
    pub fn value(&self, name: &str) -> Result<String, ExpandError> {
        Expansion::new().value_of(name, &ParamLookup(self))
    }

    /// Expand arbitrary text against these parameters; undefined names are
    /// returned beside the result.
    pub fn expand_text(&self, text: &str) -> Result<(String, Vec<String>), ExpandError> {
        let mut e = Expansion::new();
        let out = e.expand(text, &ParamLookup(self))?;
        Ok((out, e.undefined))
    }

    /// Problems met while computing host-dependent defaults.
    pub fn problems(&self) -> Vec<String> {
        self.problems.borrow().clone()
    }

    fn note_problem(&self, msg: String) {
        let mut p = self.problems.borrow_mut();
        if !p.contains(&msg) {
            p.push(msg);
        }
    }

    fn system_hostname(&self) -> &str {
        self.system_hostname.get_or_init(host::system_hostname)
    }

    fn compute_default(&self, p: &Param, which: &'static str) -> String {
        if self.computing.borrow().contains(&which) {
            self.note_problem(format!("the default of {} refers back to itself", p.name));
            return String::new();
        }
        self.computing.borrow_mut().push(which);
        let result = self.compute_default_inner(which);
        self.computing.borrow_mut().pop();
        result
    }

    fn expanded_or_note(&self, name: &str) -> String {
        match self.value(name) {
            Ok(v) => v,
            Err(e) => {
                self.note_problem(format!("{name}: {e}"));
                String::new()
            }
        }
    }

    fn compute_default_inner(&self, which: &str) -> String {
        match which {
            "myhostname" => {
                let sys = self.system_hostname().to_string();
                host::default_myhostname(&sys, || {
                    if self.explicit("mydomain").is_some() {
                        self.expanded_or_note("mydomain")
                    } else {
                        host::DEFAULT_DOMAIN.to_string()
                    }
                })
            }
            "mydomain" => host::default_mydomain(&self.expanded_or_note("myhostname")),
            "mynetworks" => {
                let style = self.expanded_or_note("mynetworks_style");
                let protos = self.expanded_or_note("inet_protocols");
                let (v4, v6) = match host::protocols(&protos) {
                    Ok(p) => p,
                    Err(e) => {
                        self.note_problem(e);
                        (true, true)
                    }
                };
                let all = self.interfaces.get_or_init(host::interface_addresses);
                let listen = self.expanded_or_note("inet_interfaces");
                let ifaces = match host::listen_interfaces(&listen, all) {
                    Ok(i) => i,
                    Err(e) => {
                        self.note_problem(e);
                        return String::new();
                    }
                };
                match host::default_mynetworks(&style, &ifaces, v4, v6) {
                    Ok(v) => v,
                    Err(e) => {
                        self.note_problem(e);
                        String::new()
                    }
                }
            }
            "process_id" => std::process::id().to_string(),
            "process_name" => host::process_name(),
            other => {
                self.note_problem(format!("no rule to compute the default of {other}"));
                String::new()
            }
        }
    }

    /// Names set in main.cf (or overridden) that are referenced by known
    /// parameters, transitively, plus the restriction class names.
    pub fn user_defined(&self) -> &HashSet<String> {
        self.user.get_or_init(|| {
            let mut user: HashSet<String> = HashSet::new();
            if self.defaults_only {
                return user;
            }
            let mut todo: Vec<String> = Vec::new();
            let is_known = |n: &str| registry::lookup(n).is_some() || self.services.contains_key(n);
            let set_names: Vec<(String, String)> = self
                .main
                .effective()
                .map(|e| (e.name.clone(), e.value.clone()))
                .chain(self.overrides.iter().map(|(k, v)| (k.clone(), v.clone())))
                .collect();
            for (name, value) in &set_names {
                if is_known(name) {
                    todo.extend(references(value));
                }
            }
            for v in &self.reference_sources {
                todo.extend(references(v));
            }
            if let Some(classes) = self.explicit("smtpd_restriction_classes") {
                todo.extend(split_list(classes).into_iter().map(|s| s.to_string()));
            }
            while let Some(n) = todo.pop() {
                if is_known(&n) || user.contains(&n) {
                    continue;
                }
                if let Some(v) = self.explicit(&n) {
                    let v = v.to_string();
                    user.insert(n);
                    todo.extend(references(&v));
                }
            }
            user
        })
    }

    /// Main.cf entries (in force) that no program uses: Postfix's
    /// `unused parameter: name=value` warnings.
    pub fn unused(&self) -> Vec<(&str, &str)> {
        if self.defaults_only {
            return Vec::new();
        }
        self.main
            .effective()
            .filter(|e| self.class_of(&e.name).is_none())
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect()
    }

    /// Names referenced as `$name` in main.cf values (every entry) that are
    /// defined nowhere: Postfix's `undefined parameter: name` warnings.
    pub fn undefined_references(&self) -> Vec<String> {
        if self.defaults_only {
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::new();
        for e in self.main.effective() {
            // Raw parameters are expanded per use, with names (`$user`,
            // `$recipient`) that only exist then.
            if registry::lookup(&e.name).is_some_and(|p| p.raw) {
                continue;
            }
            for r in references(&e.value) {
                if self.raw(&r).is_none() && !out.contains(&r) {
                    out.push(r);
                }
            }
        }
        out
    }
}

struct ParamLookup<'a>(&'a Params);

impl Lookup for ParamLookup<'_> {
    fn raw(&self, name: &str) -> Option<String> {
        self.0.raw(name)
    }
}

/// Names referenced as `$name`, `${name...}` or `$(name)` anywhere in
/// `text`, including inside conditional and relational forms.
pub fn references(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        i += 1;
        if i < b.len() && b[i] == b'$' {
            i += 1;
            continue;
        }
        if i < b.len() && (b[i] == b'{' || b[i] == b'(') {
            i += 1;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i > start {
            let n = text[start..i].to_string();
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

/// Split a list value on commas and whitespace, keeping `{ ... }` groups
/// whole (braces included, as Postfix hands them to the consumer).
pub fn split_list(value: &str) -> Vec<&str> {
    let b = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        let mut depth = 0usize;
        while i < b.len() {
            match b[i] {
                b'{' => depth += 1,
                b'}' => depth = depth.saturating_sub(1),
                c if depth == 0 && (c == b',' || c.is_ascii_whitespace()) => break,
                _ => {}
            }
            i += 1;
        }
        out.push(&value[start..i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(text: &str) -> Params {
        params_on("mx1.example.com", text)
    }

    fn params_on(hostname: &str, text: &str) -> Params {
        let (cf, _) = MainCf::parse(text, "main.cf");
        Params::new("/etc/postfix", cf)
            .with_system_hostname(hostname)
            .with_interfaces(vec![InterfaceAddr {
                addr: "127.0.0.1".parse().unwrap(),
                prefix: 8,
            }])
    }

    #[test]
    fn precedence_override_main_default() {
        let mut p = params("relayhost = [a.example]\n");
        assert_eq!(p.value("relayhost").unwrap(), "[a.example]");
        p.set_override("relayhost", "[b.example]");
        assert_eq!(p.value("relayhost").unwrap(), "[b.example]");
        assert_eq!(p.value("message_size_limit").unwrap(), "10240000");
    }

    #[test]
    fn lazy_expansion_sees_final_values() {
        let p = params("myorigin = $mydomain\nmydomain = example.org\n");
        assert_eq!(p.value("myorigin").unwrap(), "example.org");
        assert_eq!(
            p.value("mydestination").unwrap(),
            "mx1.example.com, localhost.example.org, localhost"
        );
    }

    #[test]
    fn computed_host_defaults() {
        let p = params("");
        assert_eq!(p.value("myhostname").unwrap(), "mx1.example.com");
        assert_eq!(p.value("mydomain").unwrap(), "example.com");
        let p = params_on("vm", "");
        assert_eq!(p.value("myhostname").unwrap(), "vm.localdomain");
        assert_eq!(p.value("mydomain").unwrap(), "localdomain");
        let p = params_on("vm", "mydomain = example.net\n");
        assert_eq!(p.value("myhostname").unwrap(), "vm.example.net");
    }

    #[test]
    fn compatibility_level_selects_defaults() {
        let p = params("");
        assert_eq!(p.value("mynetworks_style").unwrap(), "subnet");
        assert_eq!(p.value("mynetworks").unwrap(), "127.0.0.0/8");
        assert_eq!(p.value("smtpd_relay_restrictions").unwrap(), "");
        let p = params("compatibility_level = 3.6\n");
        assert_eq!(p.value("mynetworks_style").unwrap(), "host");
        assert_eq!(p.value("mynetworks").unwrap(), "127.0.0.1/32");
        assert_eq!(
            p.value("smtpd_relay_restrictions").unwrap(),
            "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination"
        );
        assert_eq!(p.value("relay_domains").unwrap(), "");
        assert_eq!(p.value("smtpd_tls_fingerprint_digest").unwrap(), "sha256");
    }

    #[test]
    fn self_referential_host_default_does_not_hang() {
        let p = params_on("vm", "mydomain = $myhostname\n");
        let r = p.value("myhostname");
        assert!(
            !p.problems().is_empty() || r.is_err(),
            "{r:?} {:?}",
            p.problems()
        );
    }

    #[test]
    fn classes_unused_and_undefined() {
        let mut p = params(
            "mua_client = permit_sasl_authenticated, reject\n\
             smtpd_client_restrictions = $mua_client\n\
             smtpd_restriction_classes = strict\nstrict = reject\n\
             typo_parmeter = 1\nrelayhost = $nowhere\n",
        );
        p.add_services([("dovecot", "pipe")]);
        assert_eq!(p.class_of("mua_client"), Some(Class::User));
        assert_eq!(p.class_of("strict"), Some(Class::User));
        assert_eq!(p.class_of("relayhost"), Some(Class::Builtin));
        assert_eq!(
            p.class_of("dovecot_destination_recipient_limit"),
            Some(Class::Service)
        );
        assert_eq!(p.class_of("typo_parmeter"), None);
        assert_eq!(p.unused(), vec![("typo_parmeter", "1")]);
        assert_eq!(p.undefined_references(), vec!["nowhere".to_string()]);
    }

    #[test]
    fn defaults_only_ignores_main_cf() {
        let (cf, _) = MainCf::parse("relayhost = x\n", "main.cf");
        let mut p = Params::defaults("/etc/postfix");
        p.main = cf;
        assert_eq!(p.value("relayhost").unwrap(), "");
    }

    #[test]
    fn load_stops_on_errors_not_on_warnings() {
        let dir = std::env::temp_dir().join(format!("facteur-params-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.to_str().unwrap();
        std::fs::write(dir.join("main.cf"), "relayhost = a\nrelayhost = b\n").unwrap();
        assert_eq!(Params::load(d).unwrap().value("relayhost").unwrap(), "b");
        std::fs::write(dir.join("main.cf"), "ok = 1\nbroken line\n").unwrap();
        let e = Params::load(d).err().unwrap();
        assert_eq!(e.line, Some(2));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(Params::load(d).is_err(), "a missing main.cf is an error");
    }

    #[test]
    fn list_splitting() {
        assert_eq!(
            split_list("a, b  c,{ check_policy_service inet:x:1, timeout=10s },d"),
            vec![
                "a",
                "b",
                "c",
                "{ check_policy_service inet:x:1, timeout=10s }",
                "d"
            ]
        );
        assert_eq!(split_list(" , "), Vec::<&str>::new());
    }

    #[test]
    fn reference_scan() {
        assert_eq!(
            references("$a ${b?x} $(c) $$d ${{$e} == {1} ? {$f}}"),
            vec!["a", "b", "c", "e", "f"]
        );
    }
}
