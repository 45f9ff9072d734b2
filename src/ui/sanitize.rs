//! Text from the state file or a VM made safe for a terminal (pure). A prompt, a VM name in
//! a hand-edited state or a line of a session's output may hold escape sequences (set the
//! title, clear the screen, move the cursor), C1 controls that some terminals obey as escapes,
//! or bidirectional overrides (U+202E) that make a table lie about what it shows. Each such
//! character is shown as a visible escape (`\x1b`, `\u{202e}`) instead, so the user sees that
//! it is there and the terminal obeys none of it. `--raw` and `--json` output does not go
//! through here: they stay byte for byte.

/// Whether a terminal could act on `c` rather than show it: C0 controls, DEL, C1 controls,
/// and the Unicode format characters that reorder text (bidi embeddings, overrides, isolates
/// and marks) or hide it (zero-width joiners are letters of some scripts and stay).
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        | '\u{200e}' | '\u{200f}' | '\u{061c}'
    )
}

fn escape_into(out: &mut String, c: char) {
    if (c as u32) < 0x80 {
        out.push_str(&format!("\\x{:02x}", c as u32));
    } else {
        out.push_str(&format!("\\u{{{:x}}}", c as u32));
    }
}

/// For one line (a table cell, a header field): every unsafe character escaped, newlines
/// and tabs included.
pub fn line(s: &str) -> String {
    if !s.chars().any(is_unsafe) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            escape_into(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// For text of many lines (a prompt in full, a message): newlines and tabs kept, every other
/// unsafe character escaped. A carriage return before a newline (CRLF) is dropped rather than
/// shown; a lone one would let a line overwrite itself, so it is escaped.
pub fn text(s: &str) -> String {
    if !s.chars().any(|c| is_unsafe(c) && c != '\n' && c != '\t') {
        return s.to_string();
    }
    convert(s.as_bytes(), Colour::Escape, Input::Whole).0
}

/// A session's output as a terminal may show it: as `text`, except that colour and style
/// sequences (SGR: `ESC [ params m`) are kept, since they only colour text, and bytes that
/// are not UTF-8 are shown as `\xNN`. `--raw` prints the bytes themselves.
pub fn output(bytes: &[u8]) -> String {
    convert(bytes, Colour::Keep, Input::Whole).0
}

/// `output` for a stream that arrives in pieces: a character, a CRLF or a colour sequence cut
/// between two pieces is held back until the rest comes, so the result is the same as for
/// the whole.
#[derive(Debug, Default)]
pub struct OutputStream {
    held: Vec<u8>,
}

impl OutputStream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.held.extend_from_slice(bytes);
        let (out, used) = convert(&self.held, Colour::Keep, Input::Partial);
        self.held.drain(..used);
        out
    }

    /// What is still held back, once nothing more will come.
    pub fn finish(&mut self) -> String {
        let (out, _) = convert(&self.held, Colour::Keep, Input::Whole);
        self.held.clear();
        out
    }
}

/// The longest colour sequence kept whole; a longer one is escaped.
const MAX_SGR: usize = 64;

fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 1,
    }
}

/// Whether colour sequences (SGR) are kept or escaped like any other control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Colour {
    Keep,
    Escape,
}

/// Whether the bytes are the whole text, or a part more may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Whole,
    Partial,
}

/// Escapes `bytes` (see `text` and `output`); returns the text and how many bytes it used.
/// With `Input::Partial`, an incomplete character, CRLF or colour sequence at the end is left
/// unused for the next call.
fn convert(b: &[u8], colour: Colour, input: Input) -> (String, usize) {
    let keep_sgr = colour == Colour::Keep;
    let at_end = input == Input::Whole;
    let mut out = String::with_capacity(b.len() + 16);
    let mut i = 0;
    while i < b.len() {
        let c0 = b[i];
        if c0 == 0x1b && keep_sgr {
            let mut j = i + 1;
            if j < b.len() && b[j] == b'[' {
                j += 1;
                while j < b.len()
                    && j - i < MAX_SGR
                    && (b[j].is_ascii_digit() || b[j] == b';' || b[j] == b':')
                {
                    j += 1;
                }
                if j < b.len() && b[j] == b'm' {
                    out.push_str(std::str::from_utf8(&b[i..=j]).unwrap_or_default());
                    i = j + 1;
                    continue;
                }
            }
            if j >= b.len() && !at_end && j - i < MAX_SGR {
                break;
            }
        }
        if c0 == b'\r' {
            if i + 1 == b.len() && !at_end {
                break;
            }
            if b.get(i + 1) == Some(&b'\n') {
                i += 1;
                continue;
            }
        }
        let len = utf8_len(c0);
        if i + len > b.len()
            && !at_end
            && std::str::from_utf8(&b[i..]).is_err_and(|e| e.error_len().is_none())
        {
            break;
        }
        match b.get(i..i + len).and_then(|s| std::str::from_utf8(s).ok()) {
            Some(ch) => {
                let c = ch.chars().next().unwrap_or_default();
                if is_unsafe(c) && c != '\n' && c != '\t' {
                    escape_into(&mut out, c);
                } else {
                    out.push(c);
                }
                i += len;
            }
            None => {
                out.push_str(&format!("\\x{c0:02x}"));
                i += 1;
            }
        }
    }
    (out, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_c1_and_bidi_and_keeps_the_rest() {
        assert_eq!(line("plain prompt: ünïcødé ✓"), "plain prompt: ünïcødé ✓");
        assert_eq!(line("\u{1b}]0;pwned\u{7}"), "\\x1b]0;pwned\\x07");
        assert_eq!(line("a\u{9b}2Jb"), "a\\u{9b}2Jb");
        assert_eq!(line("file\u{202e}txt.exe"), "file\\u{202e}txt.exe");
        assert_eq!(line("two\nlines\tx"), "two\\x0alines\\x09x");
        assert_eq!(line("del\u{7f}"), "del\\x7f");
        assert_eq!(text("one\ntwo\tthree\r\n"), "one\ntwo\tthree\n");
        assert_eq!(text("over\rwrite"), "over\\x0dwrite");
        assert_eq!(text("\u{1b}[2J\u{1b}c"), "\\x1b[2J\\x1bc");
        assert_eq!(text("\u{2067}iso\u{2069}"), "\\u{2067}iso\\u{2069}");
    }

    #[test]
    fn output_keeps_colours_and_escapes_the_rest() {
        assert_eq!(output(b"\x1b[1;32mok\x1b[0m\r\n"), "\x1b[1;32mok\x1b[0m\n");
        assert_eq!(
            output(b"\x1b]0;title\x07\x1b[2J"),
            "\\x1b]0;title\\x07\\x1b[2J"
        );
        assert_eq!(output(b"caf\xe9 \xc2\x9b"), "caf\\xe9 \\u{9b}");
        assert_eq!(output("ünï\u{202e}".as_bytes()), "ünï\\u{202e}");
    }

    #[test]
    fn a_stream_in_pieces_gives_what_the_whole_gives() {
        let mut whole: Vec<u8> = "a\x1b[31mré\r\nb\x1b]2;x\x07 ✓\r\n".as_bytes().to_vec();
        whole.extend_from_slice(b"\xff end\r");
        let whole = whole.as_slice();
        let expected = output(whole);
        for cut in 0..whole.len() {
            for cut2 in cut..whole.len() {
                let mut s = OutputStream::default();
                let mut got = s.push(&whole[..cut]);
                got.push_str(&s.push(&whole[cut..cut2]));
                got.push_str(&s.push(&whole[cut2..]));
                got.push_str(&s.finish());
                assert_eq!(got, expected, "cut at {cut} and {cut2}");
            }
        }
    }
}
