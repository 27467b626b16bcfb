//! The closed vocabularies of label values that are exported at 0 from start-up.

/// Why a process or probe was not attached: the `reason` label of
/// `mapwatch_attach_errors_total`. Every value is exported at 0 from the start, so the
/// first error is an increase Prometheus can see (a series born at 1 is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachErrorReason {
    /// mapwatch lacks a capability, or a security module denied access.
    Privileges,
    /// The BPF object did not load.
    Load,
    /// The kernel refused a uprobe for another reason.
    Attach,
    /// Writing a BPF map failed.
    Map,
    /// The process exited before or while it was attached (not an error of mapwatch;
    /// counted so short-lived processes are visible).
    ProcessGone,
    /// The process exec'd another binary between analysis and attach.
    BinaryChanged,
    /// The bytes at a probe site differ from the analysed binary: not attached.
    BytesMismatch,
    /// Every probe slot is in use.
    SlotsExhausted,
    /// The kernel has no BTF for the exec/exit tracepoints.
    Btf,
    /// Not an x86-64 binary.
    UnsupportedArch,
    /// A Go version mapwatch has no runtime facts for.
    UnsupportedGoVersion,
    /// A Go binary mapwatch cannot read (truncated, corrupt).
    BadBinary,
    /// A Go binary with none of the runtime functions mapwatch probes.
    NothingToProbe,
}

impl AttachErrorReason {
    pub const ALL: [AttachErrorReason; 13] = [
        AttachErrorReason::Privileges,
        AttachErrorReason::Load,
        AttachErrorReason::Attach,
        AttachErrorReason::Map,
        AttachErrorReason::ProcessGone,
        AttachErrorReason::BinaryChanged,
        AttachErrorReason::BytesMismatch,
        AttachErrorReason::SlotsExhausted,
        AttachErrorReason::Btf,
        AttachErrorReason::UnsupportedArch,
        AttachErrorReason::UnsupportedGoVersion,
        AttachErrorReason::BadBinary,
        AttachErrorReason::NothingToProbe,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AttachErrorReason::Privileges => "privileges",
            AttachErrorReason::Load => "load",
            AttachErrorReason::Attach => "attach",
            AttachErrorReason::Map => "map",
            AttachErrorReason::ProcessGone => "process_gone",
            AttachErrorReason::BinaryChanged => "binary_changed",
            AttachErrorReason::BytesMismatch => "bytes_mismatch",
            AttachErrorReason::SlotsExhausted => "slots_exhausted",
            AttachErrorReason::Btf => "btf",
            AttachErrorReason::UnsupportedArch => "unsupported_arch",
            AttachErrorReason::UnsupportedGoVersion => "unsupported_go_version",
            AttachErrorReason::BadBinary => "bad_binary",
            AttachErrorReason::NothingToProbe => "nothing_to_probe",
        }
    }
}

/// What went wrong talking to the Kubernetes API: the `kind` label of
/// `mapwatch_kubernetes_api_errors_total`. A handful of values, so an outage is one
/// series that moves, and every value exported at 0 from the start (as for
/// [`AttachErrorReason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KubernetesApiErrorKind {
    /// No connection: refused, unreachable, or the TLS handshake failed.
    Connect,
    /// No connection, response, list or watch event within its time limit.
    Timeout,
    /// The connection broke mid-exchange: reset, closed before the body's end, or not
    /// HTTP at all.
    Broken,
    /// 401 or 403 (token rejected, RBAC missing), or the token file unreadable.
    Unauthorized,
    /// Any other error status (5xx, 429, 404, …).
    HttpStatus,
    /// A body that is not the JSON asked for: invalid JSON, an HTML page, another object.
    Decode,
    /// A response or watch event over the size caps.
    TooLarge,
    /// An ERROR event in a watch stream (other than 410 Gone, which is routine).
    WatchError,
}

impl KubernetesApiErrorKind {
    pub const ALL: [KubernetesApiErrorKind; 8] = [
        KubernetesApiErrorKind::Connect,
        KubernetesApiErrorKind::Timeout,
        KubernetesApiErrorKind::Broken,
        KubernetesApiErrorKind::Unauthorized,
        KubernetesApiErrorKind::HttpStatus,
        KubernetesApiErrorKind::Decode,
        KubernetesApiErrorKind::TooLarge,
        KubernetesApiErrorKind::WatchError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            KubernetesApiErrorKind::Connect => "connect",
            KubernetesApiErrorKind::Timeout => "timeout",
            KubernetesApiErrorKind::Broken => "broken",
            KubernetesApiErrorKind::Unauthorized => "unauthorized",
            KubernetesApiErrorKind::HttpStatus => "http_status",
            KubernetesApiErrorKind::Decode => "decode",
            KubernetesApiErrorKind::TooLarge => "too_large",
            KubernetesApiErrorKind::WatchError => "watch_error",
        }
    }
}
