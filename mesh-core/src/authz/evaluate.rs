//! The decision: DENY policies first, then the ALLOW allow-list.

use super::{
    matching::{host, ip_in, ip_text, lists, wildcard},
    Action, Condition, ConnectionAttributes, Decision, OperationMatch, Policy, RequestAttributes,
    Rule, SourceMatch,
};

/// Decides for one connection (`request: None`, at a node) or one HTTP request (at a waypoint).
/// `policies` are those that apply to the destination workload or service.
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p Policy>,
    connection: &ConnectionAttributes,
    request: Option<&RequestAttributes<'_>>,
) -> Decision {
    let attributes = Attributes {
        connection,
        request,
    };
    let mut any_allow = false;
    let mut allowed = false;
    for policy in policies {
        match policy.action {
            Action::Deny if attributes.policy_matches(policy) => {
                return Decision::DeniedByPolicy {
                    policy: policy.key.clone(),
                };
            }
            Action::Allow => {
                any_allow = true;
                allowed = allowed || attributes.policy_matches(policy);
            }
            Action::Deny | Action::Audit => {}
        }
    }
    if any_allow && !allowed {
        Decision::NotAllowed
    } else {
        Decision::Allow
    }
}

/// Everything known about the traffic, and how a DENY or ALLOW rule treats what is unknowable.
struct Attributes<'a> {
    connection: &'a ConnectionAttributes,
    request: Option<&'a RequestAttributes<'a>>,
}

/// The result of checking something that may be unknowable here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Match,
    NoMatch,
    /// Needs attributes this enforcement point does not have (L7 at a node, an unknown key).
    Unknowable,
}

impl Check {
    fn from(matched: bool) -> Self {
        if matched {
            Check::Match
        } else {
            Check::NoMatch
        }
    }

    fn and(self, other: Check) -> Check {
        match (self, other) {
            (Check::NoMatch, _) | (_, Check::NoMatch) => Check::NoMatch,
            (Check::Unknowable, _) | (_, Check::Unknowable) => Check::Unknowable,
            _ => Check::Match,
        }
    }
}

impl Attributes<'_> {
    fn policy_matches(&self, policy: &Policy) -> bool {
        policy.rules.iter().any(|rule| {
            match self.rule(rule) {
                Check::Match => true,
                Check::NoMatch => false,
                // Fail closed: ALLOW cannot rely on what it cannot see; DENY assumes the worst.
                Check::Unknowable => policy.action == Action::Deny,
            }
        })
    }

    fn rule(&self, rule: &Rule) -> Check {
        let from = any(&rule.from, |source| self.source(source));
        let to = any(&rule.to, |operation| self.operation(operation));
        let when = rule.when.iter().fold(Check::Match, |acc, condition| {
            acc.and(self.condition(condition))
        });
        from.and(to).and(when)
    }

    fn principal(&self) -> Option<&str> {
        self.connection.source_principal.as_deref()
    }

    /// The namespace segment of the peer principal (`<td>/ns/<ns>/sa/<sa>`).
    fn namespace(&self) -> Option<&str> {
        let mut segments = self.principal()?.split('/');
        segments.find(|segment| *segment == "ns")?;
        segments.next()
    }

    /// The original client's address: from the request where the waypoint derived one,
    /// otherwise the peer's.
    fn remote_ip(&self) -> std::net::IpAddr {
        self.request
            .and_then(|r| r.remote_ip)
            .unwrap_or(self.connection.source_ip)
    }

    fn source(&self, source: &SourceMatch) -> Check {
        let text = |p: &String, v: &str| wildcard(p, v);
        let ip = &self.connection.source_ip;
        let remote = &self.remote_ip();
        let connection = lists(
            &source.principals,
            &source.not_principals,
            self.principal(),
            text,
        ) && lists(
            &source.service_accounts,
            &source.not_service_accounts,
            self.principal(),
            text,
        ) && lists(
            &source.namespaces,
            &source.not_namespaces,
            self.namespace(),
            text,
        ) && lists(&source.ip_blocks, &source.not_ip_blocks, Some(ip), ip_in)
            && lists(
                &source.remote_ip_blocks,
                &source.not_remote_ip_blocks,
                Some(remote),
                ip_in,
            );
        let connection = Check::from(connection);
        if source.request_principals.is_empty() && source.not_request_principals.is_empty() {
            return connection;
        }
        let Some(auth) = self.request.and_then(|r| r.auth) else {
            return connection.and(Check::Unknowable);
        };
        connection.and(Check::from(lists(
            &source.request_principals,
            &source.not_request_principals,
            auth.principal.as_deref(),
            text,
        )))
    }

    fn operation(&self, operation: &OperationMatch) -> Check {
        let port = self.connection.destination_port;
        let ports = Check::from(lists(
            &operation.ports,
            &operation.not_ports,
            Some(&port),
            |p: &u16, v: &u16| p == v,
        ));
        let l7_lists = [
            (&operation.hosts, &operation.not_hosts),
            (&operation.methods, &operation.not_methods),
            (&operation.paths, &operation.not_paths),
        ];
        if l7_lists
            .iter()
            .all(|(yes, no)| yes.is_empty() && no.is_empty())
        {
            return ports;
        }
        let Some(request) = self.request else {
            return ports.and(Check::Unknowable);
        };
        let text = |p: &String, v: &str| wildcard(p, v);
        let hosts = lists(
            &operation.hosts,
            &operation.not_hosts,
            Some(request.host),
            |p: &String, v: &str| host(p, v),
        );
        let methods = lists(
            &operation.methods,
            &operation.not_methods,
            Some(request.method),
            text,
        );
        let paths = lists(
            &operation.paths,
            &operation.not_paths,
            Some(request.path),
            text,
        );
        ports.and(Check::from(hosts && methods && paths))
    }

    fn condition(&self, condition: &Condition) -> Check {
        let connection = self.connection;
        let text = |p: &String, v: &str| wildcard(p, v);
        let ip = |p: &String, v: &std::net::IpAddr| ip_text(p, v);
        let (yes, no) = (&condition.values, &condition.not_values);
        let matched = match condition.key.as_str() {
            "source.ip" => lists(yes, no, Some(&connection.source_ip), ip),
            "remote.ip" => lists(yes, no, Some(&self.remote_ip()), ip),
            "destination.ip" => lists(yes, no, Some(&connection.destination_ip), ip),
            "source.principal" => lists(yes, no, self.principal(), text),
            "source.namespace" => lists(yes, no, self.namespace(), text),
            "destination.port" => {
                let port = connection.destination_port.to_string();
                lists(yes, no, Some(port.as_str()), |p: &String, v: &str| p == v)
            }
            key => return self.request_condition(key, condition),
        };
        Check::from(matched)
    }

    fn request_condition(&self, key: &str, condition: &Condition) -> Check {
        if key == "connection.sni" {
            let Some(request) = self.request else {
                return Check::Unknowable;
            };
            let text = |p: &String, v: &str| wildcard(p, v);
            return Check::from(lists(
                &condition.values,
                &condition.not_values,
                request.sni,
                text,
            ));
        }
        if let Some(attribute) = key.strip_prefix("request.auth.") {
            let Some(auth) = self.request.and_then(|r| r.auth) else {
                return Check::Unknowable;
            };
            let none: &[String] = &[];
            let values: &[String] = match attribute {
                "principal" => auth.principal.as_slice(),
                "presenter" => auth.presenter.as_slice(),
                "audiences" => &auth.audiences,
                claim => {
                    let Some(path) = claim
                        .strip_prefix("claims[")
                        .and_then(|rest| rest.strip_suffix(']'))
                    else {
                        return Check::Unknowable;
                    };
                    auth.claims.get(path).map_or(none, Vec::as_slice)
                }
            };
            return Check::from(any_value(condition, values));
        }
        let Some(name) = key
            .strip_prefix("request.headers[")
            .and_then(|rest| rest.strip_suffix(']'))
        else {
            // experimental.* and unknown keys are not supported: never trusted to allow.
            return Check::Unknowable;
        };
        let Some(request) = self.request else {
            return Check::Unknowable;
        };
        let values = request.headers.get_all(name);
        let present: Vec<&str> = values.iter().filter_map(|v| v.to_str().ok()).collect();
        let text = |p: &String, v: &str| wildcard(p, v);
        let matched = if present.is_empty() {
            lists(&condition.values, &condition.not_values, None, text)
        } else {
            present
                .iter()
                .any(|value| lists(&condition.values, &condition.not_values, Some(*value), text))
        };
        Check::from(matched)
    }
}

/// A condition over a multi-valued attribute: some value is accepted and none rejected; with no
/// value at all, as for an absent attribute.
fn any_value(condition: &Condition, values: &[String]) -> bool {
    let text = |p: &String, v: &str| wildcard(p, v);
    if values.is_empty() {
        return lists(&condition.values, &condition.not_values, None, text);
    }
    let accepted = condition.values.is_empty()
        || values
            .iter()
            .any(|v| lists(&condition.values, &[], Some(v.as_str()), text));
    let rejected = values
        .iter()
        .any(|v| condition.not_values.iter().any(|p| wildcard(p, v)));
    accepted && !rejected
}

/// Any of `items` matches; an empty list matches anything.
fn any<T>(items: &[T], check: impl Fn(&T) -> Check) -> Check {
    if items.is_empty() {
        return Check::Match;
    }
    let mut result = Check::NoMatch;
    for item in items {
        match check(item) {
            Check::Match => return Check::Match,
            Check::Unknowable => result = Check::Unknowable,
            Check::NoMatch => {}
        }
    }
    result
}

#[cfg(test)]
#[path = "evaluate_tests.rs"]
mod tests;
