// TEMPORARY STUB (lead) — helper-2 replaces this file with the real implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundupRule {
    Plain,
    MallocHeaders,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceGrowthRule {
    pub roundup: RoundupRule,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    pub new_cap: u64,
    pub new_bytes: u64,
}
pub fn grown_capacity(
    _rule: SliceGrowthRule,
    _old_cap: u64,
    new_len: u64,
    elem_size: u64,
    _noscan: bool,
) -> Growth {
    Growth {
        new_cap: new_len,
        new_bytes: new_len * elem_size,
    }
}
pub fn rule_for(minor: u32, _goexperiment: &str) -> Option<SliceGrowthRule> {
    (21..=27).contains(&minor).then_some(SliceGrowthRule {
        roundup: RoundupRule::MallocHeaders,
    })
}
