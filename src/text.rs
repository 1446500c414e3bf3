//! Shared pieces of the domains' plain-text syntax: a cursor for hand-written parsers and a
//! parse error that points at the offending part of the input.
//!
//! Every domain documents its syntax in `docs/domains.md`. Parsers are small recursive-descent
//! functions over [`Cursor`]; they never panic on input, and every failure names what was expected
//! and where, so that a person (or a gRPC client) can fix the text without reading our code.

use std::fmt;
use std::ops::Range;

/// A syntax error in instance, question or answer text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// What was wrong, in words (for example "expected a vertex number after '>'").
    pub message: String,
    /// The full text that was being parsed.
    pub input: String,
    /// Byte range of the offending part of `input`.
    pub span: Range<usize>,
}

impl ParseError {
    /// The span is widened to whole characters, so callers may count in bytes without care.
    pub fn new(input: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let mut end = span.end.min(input.len());
        while !input.is_char_boundary(end) {
            end += 1;
        }
        let mut start = span.start.min(end);
        while !input.is_char_boundary(start) {
            start -= 1;
        }
        Self {
            message: message.into(),
            input: input.to_string(),
            span: start..end,
        }
    }

    /// 1-based column (in characters) of the start of the offending part.
    pub fn column(&self) -> usize {
        self.input[..self.span.start].chars().count() + 1
    }
}

impl fmt::Display for ParseError {
    /// Renders as `<message> at column N` followed, for short inputs, by the input and a caret
    /// line under the offending part.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at column {}", self.message, self.column())?;
        if self.input.len() <= 200 && !self.input.contains('\n') {
            let pad = self.input[..self.span.start].chars().count();
            let width = self.input[self.span.clone()].chars().count().max(1);
            write!(
                f,
                "\n  {}\n  {}{}",
                self.input,
                " ".repeat(pad),
                "^".repeat(width)
            )?;
        } else {
            let found: String = self.input[self.span.clone()].chars().take(40).collect();
            if !found.is_empty() {
                write!(f, " (found {found:?})")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ParseError {}

/// A position in a text being parsed. Whitespace (spaces, tabs, newlines) separates tokens and is
/// otherwise insignificant.
pub struct Cursor<'a> {
    input: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(input: &'a str) -> Self {
        Self { input, pos: 0 }
    }

    pub fn input(&self) -> &'a str {
        self.input
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn skip_ws(&mut self) {
        let rest = &self.input[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// The next non-whitespace character, without consuming it.
    pub fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.input[self.pos..].chars().next()
    }

    pub fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// Consumes `c` if it is next.
    pub fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// Consumes the literal `s` if it is next.
    pub fn eat_str(&mut self, s: &str) -> bool {
        self.skip_ws();
        if self.input[self.pos..].starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// Consumes `c` or fails with "expected `what`".
    pub fn expect(&mut self, c: char, what: &str) -> Result<(), ParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error_at_token(format!("expected {what}")))
        }
    }

    /// Consumes a run of ASCII letters, digits, `_`, `*`, `+` and `-` (a "word"), returning it and
    /// its span. Empty if the next character is something else.
    pub fn word(&mut self) -> (&'a str, Range<usize>) {
        self.skip_ws();
        let start = self.pos;
        let rest = &self.input[start..];
        let len = rest
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '*' | '+' | '-')))
            .map_or(rest.len(), |(i, _)| i);
        self.pos += len;
        (&rest[..len], start..start + len)
    }

    /// Consumes a run of ASCII letters (a keyword), returning it and its span.
    pub fn keyword(&mut self) -> (&'a str, Range<usize>) {
        self.skip_ws();
        let start = self.pos;
        let rest = &self.input[start..];
        let len = rest
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphabetic() || c == '-'))
            .map_or(rest.len(), |(i, _)| i);
        self.pos += len;
        (&rest[..len], start..start + len)
    }

    /// Consumes an unsigned decimal number no larger than `max`, describing it as `what` in errors.
    pub fn number(&mut self, what: &str, max: u64) -> Result<(u64, Range<usize>), ParseError> {
        self.skip_ws();
        let start = self.pos;
        let rest = &self.input[start..];
        let len = rest
            .char_indices()
            .find(|&(_, c)| !c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        if len == 0 {
            return Err(self.error_at_token(format!("expected {what}")));
        }
        let span = start..start + len;
        self.pos += len;
        match rest[..len].parse::<u64>() {
            Ok(v) if v <= max => Ok((v, span)),
            _ => Err(ParseError::new(
                self.input,
                span,
                format!("{what} {} is out of range (at most {max})", &rest[..len]),
            )),
        }
    }

    /// Consumes a variable name of the form `<prefix><index>` with index < `count`.
    pub fn indexed_name(
        &mut self,
        prefix: char,
        what: &str,
        count: usize,
    ) -> Result<(usize, Range<usize>), ParseError> {
        self.skip_ws();
        let start = self.pos;
        if !self.eat(prefix) {
            return Err(self.error_at_token(format!("expected {what} (like {prefix}0)")));
        }
        let (index, span) = self
            .number(what, u64::MAX)
            .map_err(|e| ParseError::new(self.input, start..e.span.end, e.message))?;
        if index as usize >= count {
            return Err(ParseError::new(
                self.input,
                start..span.end,
                format!(
                    "{what} {prefix}{index} does not exist (there are {count}: {prefix}0..{prefix}{})",
                    count.saturating_sub(1)
                ),
            ));
        }
        Ok((index as usize, start..span.end))
    }

    /// Fails unless only whitespace remains.
    pub fn finish(&mut self, what: &str) -> Result<(), ParseError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.error_at_token(format!("unexpected text after the {what}")))
        }
    }

    /// An error spanning the next token (or the end of input).
    pub fn error_at_token(&mut self, message: impl Into<String>) -> ParseError {
        self.skip_ws();
        let rest = &self.input[self.pos..];
        let len = rest
            .char_indices()
            .find(|&(i, c)| i > 0 && (c.is_whitespace() || !c.is_ascii_alphanumeric()))
            .map_or(rest.len(), |(i, _)| i);
        let message = message.into();
        let message = if rest.is_empty() {
            format!("{message}, found the end of the text")
        } else {
            message
        };
        ParseError::new(self.input, self.pos..self.pos + len, message)
    }

    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ParseError {
        ParseError::new(self.input, span, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_points_at_the_bad_token() {
        let mut c = Cursor::new("dist 3 x7");
        assert_eq!(c.keyword().0, "dist");
        c.number("vertex", 63).unwrap();
        let e = c.number("vertex", 63).unwrap_err();
        assert_eq!(e.span, 7..9);
        assert_eq!(e.column(), 8);
        let shown = e.to_string();
        assert!(shown.contains("expected vertex"), "{shown}");
        assert!(shown.ends_with("       ^^"), "{shown}");
    }

    #[test]
    fn spans_are_widened_to_whole_characters() {
        let e = ParseError::new("aé", 2..2, "x");
        assert_eq!(e.span, 1..3);
        let e = ParseError::new("é", 1..1, "x");
        assert_eq!(e.span, 0..2);
        assert!(e.to_string().contains('^'));
    }

    #[test]
    fn number_out_of_range_names_the_limit() {
        let mut c = Cursor::new("99");
        let e = c.number("step count", 63).unwrap_err();
        assert!(e.message.contains("at most 63"), "{}", e.message);
    }

    #[test]
    fn end_of_input_is_reported() {
        let mut c = Cursor::new("  ");
        let e = c.expect('(', "'('").unwrap_err();
        assert!(e.message.contains("end of the text"), "{}", e.message);
    }
}
