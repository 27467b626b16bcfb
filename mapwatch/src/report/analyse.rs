//! Recording → Report.
