//! Status conditions with Kubernetes API conventions.
//!
//! `lastTransitionTime` changes only when `status` changes; reason, message and observedGeneration are
//! updated in place. Pure functions: the caller passes `now`, tests pass a fixed time.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// Status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It is not known (yet) whether the condition holds.
    Unknown,
}

impl Status {
    /// The API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(b: bool) -> Self {
        if b { Status::True } else { Status::False }
    }
}

/// A condition to set, without timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCondition<'a> {
    /// Condition type, e.g. `Ready`.
    pub type_: &'a str,
    /// Its status.
    pub status: Status,
    /// CamelCase reason.
    pub reason: &'a str,
    /// Human-readable message.
    pub message: String,
}

/// Sets `new` in `conditions`. Returns true when anything changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    new: NewCondition<'_>,
    generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let status = new.status.as_str();
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == new.type_) {
        let mut changed = false;
        if c.status != status {
            c.status = status.to_string();
            c.last_transition_time = Time(now);
            changed = true;
        }
        if c.reason != new.reason {
            c.reason = new.reason.to_string();
            changed = true;
        }
        if c.message != new.message {
            c.message = new.message;
            changed = true;
        }
        if c.observed_generation != generation {
            c.observed_generation = generation;
            changed = true;
        }
        changed
    } else {
        conditions.push(Condition {
            type_: new.type_.to_string(),
            status: status.to_string(),
            reason: new.reason.to_string(),
            message: new.message,
            observed_generation: generation,
            last_transition_time: Time(now),
        });
        true
    }
}

/// Removes the condition of `type_`. Returns true when one was removed.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    before != conditions.len()
}

/// The condition of `type_`, if present.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of `type_` is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid")
    }

    fn ready(status: Status, reason: &'static str, msg: &str) -> NewCondition<'static> {
        NewCondition {
            type_: "Ready",
            status,
            reason,
            message: msg.to_string(),
        }
    }

    #[test]
    fn transition_time_changes_only_with_status() {
        let mut conds = vec![];
        assert!(set(
            &mut conds,
            ready(Status::False, "Invalid", "bad"),
            Some(1),
            at(100)
        ));
        assert_eq!(conds[0].last_transition_time, Time(at(100)));

        // Same status, new reason/message/generation: updated, transition time kept.
        assert!(set(
            &mut conds,
            ready(Status::False, "Overlapping", "worse"),
            Some(2),
            at(200)
        ));
        assert_eq!(conds[0].last_transition_time, Time(at(100)));
        assert_eq!(conds[0].reason, "Overlapping");
        assert_eq!(conds[0].message, "worse");
        assert_eq!(conds[0].observed_generation, Some(2));

        // Nothing new: no change reported, nothing touched.
        assert!(!set(
            &mut conds,
            ready(Status::False, "Overlapping", "worse"),
            Some(2),
            at(300)
        ));
        assert_eq!(conds[0].last_transition_time, Time(at(100)));

        // Status flips: transition time moves.
        assert!(set(
            &mut conds,
            ready(Status::True, "Ready", "ok"),
            Some(2),
            at(400)
        ));
        assert_eq!(conds[0].last_transition_time, Time(at(400)));
        assert!(is_true(&conds, "Ready"));
        assert_eq!(conds.len(), 1);
    }

    #[test]
    fn conditions_of_other_types_are_independent() {
        let mut conds = vec![];
        set(&mut conds, ready(Status::True, "Ready", "ok"), None, at(1));
        set(
            &mut conds,
            NewCondition {
                type_: "Overlapping",
                status: Status::True,
                reason: "Overlap",
                message: "x".into(),
            },
            None,
            at(2),
        );
        assert_eq!(conds.len(), 2);
        assert!(remove(&mut conds, "Overlapping"));
        assert!(!remove(&mut conds, "Overlapping"));
        assert!(is_true(&conds, "Ready"));
        assert!(!is_true(&conds, "Overlapping"));
    }
}
