//! Where config comes from: a local directory of manifests ([`local`], the default) or the
//! Kubernetes API ([`kube`]).

pub mod kube;
pub mod local;
