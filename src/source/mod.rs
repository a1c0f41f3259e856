//! Sources: where utilisation readings come from.

pub mod cadvisor;
