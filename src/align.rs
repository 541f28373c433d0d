//! Dual-Pointer Chunk Alignment (DPCA) of two tokenizations of one text, on bytes.
//!
//! Follows the reference implementation of arXiv 2606.09456 (`TeacherClient._align_chunks`),
//! with each token's byte piece in place of decoded strings: two pointers walk the student
//! tokens S and the teacher tokens T; a chunk grows, always on the side whose bytes are
//! shorter, until both sides cover the same bytes and end on a UTF-8 character boundary (or
//! the chunk is one token on each side with identical bytes: then both models score the very
//! same event, and identical tokenizers give only 1:1 chunks, i.e. same-tokenizer OPD). The
//! first such point closes the chunk, so chunks are minimal. A chunk with more than K tokens
//! on a side is masked. When the two byte streams disagree, or one side runs out, the pointers
//! are stuck and the rest is one masked chunk. Comparing bytes avoids decode round trips: it
//! is exact for byte-fallback tokens and for characters split across tokens, and it runs in
//! time linear in the text length.
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masked {
    /// Aligned; its tokens carry the chunk's signal.
    No,
    /// More than K tokens on a side.
    TooLong,
    /// The rest after the pointers got stuck.
    Stuck,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub student: Range<usize>,
    pub teacher: Range<usize>,
    pub masked: Masked,
}

impl Chunk {
    pub fn is_masked(&self) -> bool {
        self.masked != Masked::No
    }

    /// "1:1", "2:3", or why the chunk is masked (K = `max_tokens`), for readable tables.
    pub fn label(&self, max_tokens: usize) -> String {
        match self.masked {
            Masked::No => format!("{}:{}", self.student.len(), self.teacher.len()),
            Masked::TooLong => format!("masked (>{max_tokens} tokens, or special)"),
            Masked::Stuck => "masked (texts differ from here)".to_string(),
        }
    }
}

/// Token pieces for people: whole characters as quoted text, pieces of a character as hex bytes.
pub fn show_pieces<P: AsRef<[u8]>>(pieces: &[P]) -> String {
    let one = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) => format!("{s:?}"),
        Err(_) => b.iter().map(|x| format!("<{x:02X}>")).collect(),
    };
    pieces.iter().map(|p| one(p.as_ref())).collect::<Vec<_>>().join(" ")
}

/// Whether byte offset `off` of `text` lies between characters (the end counts as one).
fn is_char_boundary(text: &[u8], off: usize) -> bool {
    off >= text.len() || text[off] & 0xC0 != 0x80
}

/// Aligns the byte pieces of student tokens with those of teacher tokens. `max_tokens` is K.
/// The chunks cover both sequences completely, in order.
pub fn dpca<S: AsRef<[u8]>, T: AsRef<[u8]>>(student: &[S], teacher: &[T], max_tokens: usize) -> Vec<Chunk> {
    let (n, m) = (student.len(), teacher.len());
    let text: Vec<u8> = student.iter().flat_map(|p| p.as_ref().iter().copied()).collect();
    let mut offset = 0; // bytes of `text` before the current chunk
    let mut chunks = Vec::new();
    let (mut s, mut t) = (0, 0);
    // The chunk's bytes on each side.
    let mut sbuf: Vec<u8> = Vec::new();
    let mut tbuf: Vec<u8> = Vec::new();
    'outer: while s < n && t < m {
        sbuf.clear();
        tbuf.clear();
        sbuf.extend_from_slice(student[s].as_ref());
        tbuf.extend_from_slice(teacher[t].as_ref());
        let (mut se, mut te) = (s + 1, t + 1);
        let mut checked = 0;
        loop {
            let common = sbuf.len().min(tbuf.len());
            if sbuf[checked..common] != tbuf[checked..common] {
                break 'outer; // the texts differ: stuck
            }
            checked = common;
            let one_to_one = se - s == 1 && te - t == 1;
            if sbuf.len() == tbuf.len() && (one_to_one || is_char_boundary(&text, offset + sbuf.len())) {
                offset += sbuf.len();
                let too_long = se - s > max_tokens || te - t > max_tokens;
                chunks.push(Chunk { student: s..se, teacher: t..te, masked: if too_long { Masked::TooLong } else { Masked::No } });
                (s, t) = (se, te);
                continue 'outer;
            }
            // Grow the shorter side (the student on a tie inside a character).
            let grow_student = sbuf.len() <= tbuf.len();
            if grow_student && se < n {
                sbuf.extend_from_slice(student[se].as_ref());
                se += 1;
            } else if (!grow_student || sbuf.len() == tbuf.len()) && te < m {
                // The teacher grows, or (equal text, the student exhausted) takes the tie.
                tbuf.extend_from_slice(teacher[te].as_ref());
                te += 1;
            } else {
                break 'outer; // the side that must grow is exhausted: stuck
            }
        }
    }
    if s < n || t < m {
        chunks.push(Chunk { student: s..n, teacher: t..m, masked: Masked::Stuck });
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn spans(chunks: &[Chunk]) -> Vec<(usize, usize, bool)> {
        chunks.iter().map(|c| (c.student.len(), c.teacher.len(), c.is_masked())).collect()
    }

    #[test]
    fn identical_tokenizations_give_one_to_one_chunks() {
        let p = pieces(&["Tom", " has", " 12", " apples", "."]);
        let c = dpca(&p, &p, 6);
        assert_eq!(c.len(), 5);
        assert!(c.iter().enumerate().all(|(i, c)| c.student == (i..i + 1) && c.teacher == (i..i + 1) && !c.is_masked()));
    }

    #[test]
    fn packed_digits_against_split_digits() {
        // Llama 3 packs up to three digits; Qwen splits them one per token.
        let s = pieces(&[" 1234", "567", "."]);
        let t = pieces(&[" ", "1", "2", "3", "4", "5", "6", "7", "."]);
        assert_eq!(spans(&dpca(&s, &t, 6)), vec![(1, 5, false), (1, 3, false), (1, 1, false)]);
        // A chunk with more than K tokens on a side is masked.
        let s = pieces(&[" 1234567", "."]);
        let c = dpca(&s, &t, 6);
        assert_eq!(spans(&c), vec![(1, 8, true), (1, 1, false)]);
        assert_eq!(c[0].masked, Masked::TooLong);
        assert_eq!(spans(&dpca(&s, &t, 8)), vec![(1, 8, false), (1, 1, false)]);
    }

    #[test]
    fn chunks_are_minimal() {
        let s = pieces(&["ab", "c", "de"]);
        let t = pieces(&["a", "bc", "d", "e"]);
        assert_eq!(spans(&dpca(&s, &t, 6)), vec![(2, 2, false), (1, 2, false)]);
    }

    #[test]
    fn a_character_split_across_byte_tokens_is_never_cut() {
        // "é" is C3 A9. Student: byte-fallback tokens; teacher: one token "é!".
        let s: Vec<Vec<u8>> = vec![vec![0xC3], vec![0xA9], b"!".to_vec()];
        let t: Vec<Vec<u8>> = vec!["é!".as_bytes().to_vec()];
        assert_eq!(spans(&dpca(&s, &t, 6)), vec![(3, 1, false)]);
        // Both sides split the 4-byte emoji differently: the chunk closes only after it.
        // (A split at the same byte on both sides would be two 1:1 chunks of identical pieces.)
        let e = "😀".as_bytes();
        let s: Vec<Vec<u8>> = vec![e[..1].to_vec(), e[1..].to_vec(), b"x".to_vec()];
        let t: Vec<Vec<u8>> = vec![e[..3].to_vec(), e[3..].to_vec(), b"x".to_vec()];
        assert_eq!(spans(&dpca(&s, &t, 6)), vec![(2, 2, false), (1, 1, false)]);
    }

    #[test]
    fn different_texts_get_stuck_and_mask_the_rest() {
        let s = pieces(&["Tom", " has", " 12", " pears"]);
        let t = pieces(&["Tom", " has", " 1", "2", " apples"]);
        let c = dpca(&s, &t, 6);
        assert_eq!(spans(&c), vec![(1, 1, false), (1, 1, false), (1, 2, false), (1, 1, true)]);
        assert_eq!(c[3].masked, Masked::Stuck);
        // A teacher that ends early (truncated): the student's tail is masked.
        let c = dpca(&s, &pieces(&["Tom", " ha"]), 6);
        assert_eq!(spans(&c), vec![(1, 1, false), (3, 1, true)]);
    }

    #[test]
    fn empty_inputs() {
        let none: Vec<Vec<u8>> = vec![];
        assert!(dpca(&none, &none, 6).is_empty());
        assert_eq!(spans(&dpca(&pieces(&["a"]), &none, 6)), vec![(1, 0, true)]);
    }

    #[test]
    fn identical_partial_character_tokens_stay_one_to_one() {
        let e = "😀".as_bytes();
        let p: Vec<Vec<u8>> = vec![e[..2].to_vec(), e[2..].to_vec()];
        assert_eq!(spans(&dpca(&p, &p, 6)), vec![(1, 1, false), (1, 1, false)]);
        // Different pieces that only meet inside the character wait for its end.
        let q: Vec<Vec<u8>> = vec![e[..1].to_vec(), e[1..2].to_vec(), e[2..].to_vec()];
        assert_eq!(spans(&dpca(&q, &p, 6)), vec![(3, 2, false)]);
    }

    #[test]
    fn boundary_check() {
        let t = "aé".as_bytes();
        assert!(is_char_boundary(t, 1) && !is_char_boundary(t, 2) && is_char_boundary(t, 3));
    }
}
