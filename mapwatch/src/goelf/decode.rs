//! Decode a Go function's machine code to find where probes may go: the first
//! instruction after the stack-bound check, and every RET.
//!
//! Why not offset 0: Go's prologue compares SP with `g.stackguard0` and, when the stack
//! is too small, calls `runtime.morestack` and jumps back to the function's first byte
//! (the trailer ends in `JMP fn(SB)`, src/cmd/internal/obj/x86/obj6.go `stacksplit`).
//! A probe at +0 would fire again after every stack growth; it is also single-stepped
//! (~10× the cost). The instruction after the check runs exactly once per call, with
//! the argument registers untouched (only R12 may have been written).
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Offsets of `g.stackguard0` and `g.stackguard1` in `runtime.g` (src/runtime/runtime2.go:
/// stack, stackguard0, stackguard1), the same in every Go version with the register ABI.
/// Most functions compare SP with stackguard0; functions that run on the system stack
/// (`//go:systemstack`, e.g. stopTheWorldWithSema) with stackguard1
/// (src/cmd/internal/obj/x86/obj6.go `stacksplit`).
const STACKGUARD_OFFSETS: [u64; 2] = [0x10, 0x18];

/// Where, relative to the function's start, probes can be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionLayout {
    /// Offset of the first instruction after the stack-bound check; `None` for a
    /// function without a check (a leaf with a small frame).
    pub after_stack_check: Option<u64>,
    /// Offsets of every RET instruction.
    pub rets: Vec<u64>,
    /// Offsets of every instruction start, to verify that a probe lands on a boundary.
    pub boundaries: Vec<u64>,
}

impl FunctionLayout {
    /// Offset an entry probe goes to: after the check, or the first instruction of a
    /// function that has no check.
    pub fn entry_offset(&self) -> u64 {
        self.after_stack_check.unwrap_or(0)
    }

    pub fn is_boundary(&self, offset: u64) -> bool {
        self.boundaries.binary_search(&offset).is_ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid instruction at +{offset:#x}")]
    Invalid { offset: u64 },
    #[error("empty function")]
    Empty,
}

/// How many instructions the prologue may have before the check's JBE:
/// `LEAQ -N(SP), R12` (large frames) or `MOVQ SP, R12; SUBQ; JCS` (huge frames), a
/// CMP, then the JBE.
const PROLOGUE_SCAN: usize = 6;

/// Decodes `code` (a whole function, starting at virtual address `vaddr`).
pub fn analyze_function(code: &[u8], vaddr: u64) -> Result<FunctionLayout, DecodeError> {
    if code.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut decoder = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut boundaries = Vec::new();
    let mut rets = Vec::new();
    let mut prologue: Vec<Instruction> = Vec::with_capacity(PROLOGUE_SCAN);
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        let offset = instruction.ip() - vaddr;
        if instruction.code() == Code::INVALID {
            // Go pads between functions with INT3, never with data; an invalid byte
            // inside the symbol's range means we are not reading the code we think.
            return Err(DecodeError::Invalid { offset });
        }
        boundaries.push(offset);
        if instruction.mnemonic() == Mnemonic::Ret {
            rets.push(offset);
        }
        if prologue.len() < PROLOGUE_SCAN {
            prologue.push(instruction);
        }
    }
    Ok(FunctionLayout {
        after_stack_check: find_stack_check_end(&prologue).map(|end| end - vaddr),
        rets,
        boundaries,
    })
}

/// A CALL inside a function: where it returns to, and whom it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallReturn {
    /// Offset of the instruction after the CALL, from the function's start: where the
    /// callee's results are in registers (Go ABI: first result in RAX).
    pub return_offset: u64,
    /// Absolute target of a direct CALL; None for an indirect one (a func value).
    pub target: Option<u64>,
}

/// Every CALL in `code` (a whole function at `vaddr`), in address order.
pub fn call_returns(code: &[u8], vaddr: u64) -> Result<Vec<CallReturn>, DecodeError> {
    if code.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut decoder = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut calls = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.code() == Code::INVALID {
            return Err(DecodeError::Invalid {
                offset: instruction.ip() - vaddr,
            });
        }
        if instruction.mnemonic() == Mnemonic::Call {
            let target = (instruction.op0_kind() == OpKind::NearBranch64)
                .then(|| instruction.near_branch_target());
            calls.push(CallReturn {
                return_offset: instruction.next_ip() - vaddr,
                target,
            });
        }
    }
    Ok(calls)
}

/// Returns the address after `CMP <reg>, [R14+0x10 or 0x18]` + `JBE`.
fn find_stack_check_end(prologue: &[Instruction]) -> Option<u64> {
    prologue.windows(2).find_map(|pair| {
        let (cmp, jump) = (&pair[0], &pair[1]);
        let compares_stackguard = cmp.mnemonic() == Mnemonic::Cmp
            && (0..cmp.op_count()).any(|i| {
                cmp.op_kind(i) == OpKind::Memory
                    && cmp.memory_base() == Register::R14
                    && cmp.memory_index() == Register::None
                    && STACKGUARD_OFFSETS.contains(&cmp.memory_displacement64())
            });
        (compares_stackguard && jump.mnemonic() == Mnemonic::Jbe).then(|| jump.next_ip())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// growslice's prologue in Go 1.21–1.27 (docs/go-runtime.md, "Probe sites"):
    /// CMPQ SP,0x10(R14); JBE rel32; PUSHQ BP; MOVQ SP,BP; RET.
    const SMALL_FRAME: &[u8] = &[
        0x49, 0x3b, 0x66, 0x10, // cmp rsp,[r14+0x10]
        0x0f, 0x86, 0x10, 0x00, 0x00, 0x00, // jbe
        0x55, // push rbp
        0x48, 0x89, 0xe5, // mov rbp,rsp
        0xc3, // ret
    ];

    #[test]
    fn finds_end_of_small_frame_check_and_rets() {
        let layout = analyze_function(SMALL_FRAME, 0x401000).unwrap();
        assert_eq!(layout.after_stack_check, Some(0xa));
        assert_eq!(layout.rets, vec![0xe]);
        assert!(layout.is_boundary(0xa));
        assert!(layout.is_boundary(0xb));
        assert!(!layout.is_boundary(0xc));
    }

    #[test]
    fn finds_end_of_large_frame_check_with_short_jump() {
        let code = [
            0x4c, 0x8d, 0x64, 0x24, 0xd8, // lea r12,[rsp-0x28]
            0x4d, 0x3b, 0x66, 0x10, // cmp r12,[r14+0x10]
            0x76, 0x02, // jbe +2
            0x55, // push rbp
            0xc3, // ret
            0xcc, // int3
        ];
        let layout = analyze_function(&code, 0x1000).unwrap();
        assert_eq!(layout.after_stack_check, Some(0xb));
        assert_eq!(layout.rets, vec![0xc]);
    }

    #[test]
    fn finds_end_of_system_stack_check_against_stackguard1() {
        // stopTheWorldWithSema (go1.25): LEAQ -0x28(SP),R12; CMPQ R12,0x18(R14); JBE.
        let code = [
            0x4c, 0x8d, 0x64, 0x24, 0xd8, // lea r12,[rsp-0x28]
            0x4d, 0x3b, 0x66, 0x18, // cmp r12,[r14+0x18]
            0x0f, 0x86, 0x08, 0x05, 0x00, 0x00, // jbe
            0x55, // push rbp
            0xc3, // ret
        ];
        let layout = analyze_function(&code, 0x1000).unwrap();
        assert_eq!(layout.after_stack_check, Some(0xf));
    }

    #[test]
    fn leaf_without_check_probes_first_instruction() {
        let code = [0x48, 0x89, 0xd8, 0xc3]; // mov rax,rbx; ret
        let layout = analyze_function(&code, 0x1000).unwrap();
        assert_eq!(layout.after_stack_check, None);
        assert_eq!(layout.entry_offset(), 0);
    }

    #[test]
    fn finds_direct_and_indirect_calls_with_their_return_offsets() {
        let code = [
            0xe8, 0x10, 0x00, 0x00, 0x00, // call +0x10 (direct, target 0x1015)
            0xff, 0xd1, // call rcx (indirect: a func value)
            0x48, 0x89, 0x44, 0x24, 0x30, // mov [rsp+0x30],rax
            0xc3, // ret
        ];
        let calls = call_returns(&code, 0x1000).unwrap();
        assert_eq!(
            calls,
            vec![
                CallReturn {
                    return_offset: 5,
                    target: Some(0x1015)
                },
                CallReturn {
                    return_offset: 7,
                    target: None
                },
            ]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_guess() {
        assert_eq!(analyze_function(&[], 0), Err(DecodeError::Empty));
        assert!(matches!(
            analyze_function(&[0x90, 0x06], 0),
            Err(DecodeError::Invalid { .. })
        ));
    }
}
