//! Kubernetes `LabelSelector` matching, pure: `matchLabels` plus `matchExpressions` with the four set-based
//! operators (`In`, `NotIn`, `Exists`, `DoesNotExist`), with the API server's semantics.
//!
//! ```text
//!   LabelSelector ──validate──> SelectorError (bad operator, missing/unexpected values)
//!        │
//!        └──matches(labels)──> bool   (every matchLabels pair AND every expression must hold)
//! ```
//!
//! Rules (as in `metav1.LabelSelectorAsSelector`):
//! - an empty selector `{}` matches everything; an *absent* selector is the caller's business (for most
//!   fields "absent" means "no constraint", for some it means "nothing");
//! - `In` / `NotIn` need at least one value, `Exists` / `DoesNotExist` take none;
//! - `NotIn` and `DoesNotExist` match objects that do not have the key at all;
//! - operators are case-sensitive, as on the API server.
//!
//! The whole selector is validated before any label is compared, so a broken selector is reported the same
//! way whatever labels the object has (instead of matching some objects and failing on others).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::error::ReasonedError;

/// A `LabelSelector` that the API server would reject; the message names the expression and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The operator is not one of `In`, `NotIn`, `Exists`, `DoesNotExist`.
    #[error(
        "matchExpressions[{index}] (key \"{key}\"): unknown operator \"{operator}\"; use In, NotIn, Exists or DoesNotExist"
    )]
    UnknownOperator {
        /// Position of the expression in `matchExpressions`.
        index: usize,
        /// The expression's key.
        key: String,
        /// The operator as written.
        operator: String,
    },

    /// `In` or `NotIn` without values.
    #[error("matchExpressions[{index}] (key \"{key}\"): operator {operator} needs at least one value")]
    MissingValues {
        /// Position of the expression in `matchExpressions`.
        index: usize,
        /// The expression's key.
        key: String,
        /// `In` or `NotIn`.
        operator: &'static str,
    },

    /// `Exists` or `DoesNotExist` with values.
    #[error(
        "matchExpressions[{index}] (key \"{key}\"): operator {operator} takes no values but has {count}; remove `values`"
    )]
    UnexpectedValues {
        /// Position of the expression in `matchExpressions`.
        index: usize,
        /// The expression's key.
        key: String,
        /// `Exists` or `DoesNotExist`.
        operator: &'static str,
        /// How many values were given.
        count: usize,
    },
}

impl ReasonedError for SelectorError {
    fn reason(&self) -> &'static str {
        "InvalidSelector"
    }
}

/// A validated `matchExpressions` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::In => "In",
            Op::NotIn => "NotIn",
            Op::Exists => "Exists",
            Op::DoesNotExist => "DoesNotExist",
        }
    }
}

fn check(index: usize, req: &LabelSelectorRequirement) -> Result<Op, SelectorError> {
    let op = match req.operator.as_str() {
        "In" => Op::In,
        "NotIn" => Op::NotIn,
        "Exists" => Op::Exists,
        "DoesNotExist" => Op::DoesNotExist,
        other => {
            return Err(SelectorError::UnknownOperator {
                index,
                key: req.key.clone(),
                operator: other.to_string(),
            });
        }
    };
    let count = req.values.as_ref().map_or(0, Vec::len);
    match op {
        Op::In | Op::NotIn if count == 0 => Err(SelectorError::MissingValues {
            index,
            key: req.key.clone(),
            operator: op.name(),
        }),
        Op::Exists | Op::DoesNotExist if count > 0 => Err(SelectorError::UnexpectedValues {
            index,
            key: req.key.clone(),
            operator: op.name(),
            count,
        }),
        _ => Ok(op),
    }
}

/// Checks that the selector is one the API server would accept (operators and values), without matching.
/// Use it when a selector is read from configuration, to report it once on the object that holds it.
pub fn validate(sel: &LabelSelector) -> Result<(), SelectorError> {
    for (index, req) in sel.match_expressions.iter().flatten().enumerate() {
        check(index, req)?;
    }
    Ok(())
}

/// Whether `labels` satisfy `sel`: every `matchLabels` pair and every `matchExpressions` entry must hold.
/// An empty selector matches everything. Fails if the selector itself is invalid (see [`SelectorError`]).
pub fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, SelectorError> {
    let ops = sel
        .match_expressions
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, req)| check(index, req).map(|op| (op, req)))
        .collect::<Result<Vec<_>, _>>()?;

    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    if !labels_ok {
        return Ok(false);
    }

    Ok(ops.into_iter().all(|(op, req)| {
        let value = labels.get(&req.key);
        let in_values = |v: &String| req.values.iter().flatten().any(|x| x == v);
        match op {
            Op::In => value.is_some_and(in_values),
            Op::NotIn => !value.is_some_and(in_values),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_string(),
            operator: op.to_string(),
            values: values.map(|vs| vs.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: if ml.is_empty() { None } else { Some(labels(ml)) },
            match_expressions: if exprs.is_empty() { None } else { Some(exprs) },
        }
    }

    #[test]
    fn matching_table() {
        let obj = labels(&[("app", "web"), ("tier", "front"), ("env", "prod")]);
        let cases: Vec<(&str, LabelSelector, bool)> = vec![
            (
                "empty selector matches everything",
                LabelSelector::default(),
                true,
            ),
            (
                "empty-but-present fields match everything",
                LabelSelector {
                    match_labels: Some(BTreeMap::new()),
                    match_expressions: Some(vec![]),
                },
                true,
            ),
            (
                "matchLabels all equal",
                sel(&[("app", "web"), ("env", "prod")], vec![]),
                true,
            ),
            (
                "matchLabels one differs",
                sel(&[("app", "web"), ("env", "dev")], vec![]),
                false,
            ),
            ("matchLabels key absent", sel(&[("team", "a")], vec![]), false),
            (
                "In with value present",
                sel(&[], vec![expr("env", "In", Some(&["dev", "prod"]))]),
                true,
            ),
            (
                "In with other value",
                sel(&[], vec![expr("env", "In", Some(&["dev"]))]),
                false,
            ),
            (
                "In with key absent",
                sel(&[], vec![expr("team", "In", Some(&["a"]))]),
                false,
            ),
            (
                "NotIn with other value",
                sel(&[], vec![expr("env", "NotIn", Some(&["dev"]))]),
                true,
            ),
            (
                "NotIn with value listed",
                sel(&[], vec![expr("env", "NotIn", Some(&["prod"]))]),
                false,
            ),
            (
                "NotIn with key absent matches",
                sel(&[], vec![expr("team", "NotIn", Some(&["a"]))]),
                true,
            ),
            (
                "Exists present",
                sel(&[], vec![expr("tier", "Exists", None)]),
                true,
            ),
            (
                "Exists with empty values list",
                sel(&[], vec![expr("tier", "Exists", Some(&[]))]),
                true,
            ),
            (
                "Exists absent",
                sel(&[], vec![expr("team", "Exists", None)]),
                false,
            ),
            (
                "DoesNotExist absent",
                sel(&[], vec![expr("team", "DoesNotExist", None)]),
                true,
            ),
            (
                "DoesNotExist present",
                sel(&[], vec![expr("app", "DoesNotExist", None)]),
                false,
            ),
            (
                "labels and expressions are ANDed (both hold)",
                sel(&[("app", "web")], vec![expr("env", "In", Some(&["prod"]))]),
                true,
            ),
            (
                "labels and expressions are ANDed (expression fails)",
                sel(&[("app", "web")], vec![expr("env", "In", Some(&["dev"]))]),
                false,
            ),
            (
                "every expression must hold",
                sel(
                    &[],
                    vec![expr("app", "Exists", None), expr("team", "Exists", None)],
                ),
                false,
            ),
        ];
        for (name, s, want) in cases {
            assert_eq!(matches(&s, &obj), Ok(want), "case: {name}");
            assert_eq!(validate(&s), Ok(()), "case: {name}");
        }
    }

    #[test]
    fn empty_labels_table() {
        let none = BTreeMap::new();
        let cases: Vec<(&str, LabelSelector, bool)> = vec![
            ("empty selector, no labels", LabelSelector::default(), true),
            ("matchLabels, no labels", sel(&[("a", "b")], vec![]), false),
            (
                "NotIn, no labels",
                sel(&[], vec![expr("a", "NotIn", Some(&["b"]))]),
                true,
            ),
            (
                "DoesNotExist, no labels",
                sel(&[], vec![expr("a", "DoesNotExist", None)]),
                true,
            ),
        ];
        for (name, s, want) in cases {
            assert_eq!(matches(&s, &none), Ok(want), "case: {name}");
        }
    }

    #[test]
    fn invalid_selector_table() {
        let obj = labels(&[("app", "web")]);
        let cases: Vec<(&str, LabelSelector, &str, &str)> = vec![
            (
                "unknown operator",
                sel(&[], vec![expr("app", "Equals", Some(&["web"]))]),
                "matchExpressions[0] (key \"app\"): unknown operator \"Equals\"; use In, NotIn, Exists or DoesNotExist",
                "InvalidSelector",
            ),
            (
                "operators are case-sensitive",
                sel(&[], vec![expr("app", "in", Some(&["web"]))]),
                "unknown operator \"in\"",
                "InvalidSelector",
            ),
            (
                "In without values",
                sel(&[], vec![expr("app", "In", None)]),
                "matchExpressions[0] (key \"app\"): operator In needs at least one value",
                "InvalidSelector",
            ),
            (
                "NotIn with an empty list",
                sel(
                    &[],
                    vec![expr("app", "Exists", None), expr("env", "NotIn", Some(&[]))],
                ),
                "matchExpressions[1] (key \"env\"): operator NotIn needs at least one value",
                "InvalidSelector",
            ),
            (
                "Exists with values",
                sel(&[], vec![expr("app", "Exists", Some(&["web"]))]),
                "matchExpressions[0] (key \"app\"): operator Exists takes no values but has 1",
                "InvalidSelector",
            ),
            (
                "DoesNotExist with values",
                sel(&[], vec![expr("x", "DoesNotExist", Some(&["a", "b"]))]),
                "operator DoesNotExist takes no values but has 2",
                "InvalidSelector",
            ),
            (
                // A broken expression is reported even when matchLabels already fails.
                "invalid even when matchLabels fails",
                sel(&[("app", "db")], vec![expr("app", "Bogus", None)]),
                "unknown operator \"Bogus\"",
                "InvalidSelector",
            ),
        ];
        for (name, s, want_msg, want_reason) in cases {
            let err = matches(&s, &obj).expect_err(name);
            assert!(err.to_string().contains(want_msg), "case {name}: got {err}");
            assert_eq!(err.reason(), want_reason, "case: {name}");
            assert_eq!(validate(&s), Err(err), "case: {name}");
        }
    }
}
