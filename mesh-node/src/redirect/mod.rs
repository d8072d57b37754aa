//! eBPF traffic redirection: loading, attaching and feeding the programs built from `mesh-ebpf`.
