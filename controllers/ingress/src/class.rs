//! Which Ingresses this controller serves: the IngressClass decision, a pure function.
//!
//! ```text
//!   spec.ingressClassName ──┐ (the field wins; the annotation is read only when the field is unset)
//!   kubernetes.io/ingress.class ─┴─> class name ──> IngressClass of that name ──> spec.controller == ours?
//!   neither ──> IngressClasses with ingressclass.kubernetes.io/is-default-class: "true" ──> all ours?
//! ```
//!
//! The Kubernetes documentation calls `ingressClassName` the replacement of the deprecated annotation
//! (the API server refuses to create an Ingress with both, but an object from before 1.18 can carry both),
//! so the field decides and the annotation is read only when the field is empty. The annotation's value
//! is looked up as an IngressClass name, like the field's.
//!
//! Several default classes: the `DefaultIngressClass` admission plugin sets `ingressClassName` of new
//! Ingresses without field or legacy annotation; up to Kubernetes 1.24 it refused them when several
//! classes were marked default, since 1.25 (kubernetes#110974) it picks the newest default (ties: the
//! lower name). Class-less Ingresses still exist (stored before a default class existed, or without the
//! plugin). Serving one is safe only when no other controller can claim it too, so a class-less
//! Ingress is served when every default IngressClass is ours (reported as the first by name), and left
//! alone as soon as one default belongs to another controller.
//!
//! The legacy annotation names an IngressClass here; ingress-nginx compares it with its
//! `--ingress-class` flag instead (see docs/ingress.md, Ingress classes).

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// `spec.controller` of the IngressClasses ferrite-ingress implements.
pub const CONTROLLER_NAME: &str = "ferrite.dev/ingress";
/// The deprecated Ingress annotation naming a class.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// IngressClass annotation marking the cluster's default class.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Where the class of a served Ingress came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassSource {
    /// `spec.ingressClassName`.
    Field,
    /// The deprecated `kubernetes.io/ingress.class` annotation.
    Annotation,
    /// No class on the Ingress; the default IngressClass is ours.
    Default,
}

/// The outcome for one Ingress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassDecision {
    Served { class: String, source: ClassSource },
    NotServed(NotServed),
}

impl ClassDecision {
    pub fn is_served(&self) -> bool {
        matches!(self, ClassDecision::Served { .. })
    }
}

/// Why an Ingress is not ours. Not an error: most Ingresses of a cluster may belong to other controllers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotServed {
    #[error("IngressClass {class:?} belongs to controller {controller:?}")]
    OtherController { class: String, controller: String },
    #[error("IngressClass {class:?} does not exist")]
    UnknownClass { class: String },
    #[error("no class and no default IngressClass")]
    NoDefaultClass,
    #[error("no class, and the default IngressClass {class:?} belongs to controller {controller:?}")]
    DefaultOfOtherController { class: String, controller: String },
}

/// Decides whether `controller` (normally [`CONTROLLER_NAME`]) serves `ingress`, given every IngressClass.
pub fn decide(ingress: &Ingress, classes: &[IngressClass], controller: &str) -> ClassDecision {
    let field = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .filter(|c| !c.is_empty());
    let annotation = || {
        ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
            .map(String::as_str)
            .filter(|c| !c.is_empty())
    };
    let named = match field {
        Some(class) => Some((class, ClassSource::Field)),
        None => annotation().map(|class| (class, ClassSource::Annotation)),
    };
    if let Some((class, source)) = named {
        let Some(found) = classes.iter().find(|c| c.metadata.name.as_deref() == Some(class)) else {
            return ClassDecision::NotServed(NotServed::UnknownClass {
                class: class.to_owned(),
            });
        };
        let owner = controller_of(found);
        return if owner == controller {
            ClassDecision::Served {
                class: class.to_owned(),
                source,
            }
        } else {
            ClassDecision::NotServed(NotServed::OtherController {
                class: class.to_owned(),
                controller: owner.to_owned(),
            })
        };
    }
    let mut defaults: Vec<&IngressClass> = classes.iter().filter(|c| is_default(c)).collect();
    defaults.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if let Some(other) = defaults.iter().find(|c| controller_of(c) != controller) {
        return ClassDecision::NotServed(NotServed::DefaultOfOtherController {
            class: other.metadata.name.clone().unwrap_or_default(),
            controller: controller_of(other).to_owned(),
        });
    }
    match defaults.first() {
        Some(ours) => ClassDecision::Served {
            class: ours.metadata.name.clone().unwrap_or_default(),
            source: ClassSource::Default,
        },
        None => ClassDecision::NotServed(NotServed::NoDefaultClass),
    }
}

fn controller_of(class: &IngressClass) -> &str {
    class
        .spec
        .as_ref()
        .and_then(|s| s.controller.as_deref())
        .unwrap_or("")
}

/// The admission controller compares the annotation with the string "true"; so does this.
pub fn is_default(class: &IngressClass) -> bool {
    class
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
        .map(String::as_str)
        == Some("true")
}
