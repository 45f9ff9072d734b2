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

/// For text of many lines (a prompt in full, a session's output): newlines and tabs kept,
/// every other unsafe character escaped. A carriage return before a newline (CRLF output) is
/// dropped rather than shown; a lone one would let a line overwrite itself, so it is escaped.
pub fn text(s: &str) -> String {
    if !s.chars().any(|c| is_unsafe(c) && c != '\n' && c != '\t') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' if chars.peek() == Some(&'\n') => {}
            c if is_unsafe(c) => escape_into(&mut out, c),
            c => out.push(c),
        }
    }
    out
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
}
