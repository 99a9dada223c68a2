//! IRC lines (RFC 1459 / 2812 framing): just enough to read what a server
//! sends a bot and to write what a bot sends back.

/// One line from the server: `[@tags] [:prefix] COMMAND params… [:trailing]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// The sender's nick (the prefix up to `!`), or the server's name.
    pub source: Option<&'a str>,
    pub command: &'a str,
    /// The parameters; the trailing one, if any, is the last.
    pub params: Vec<&'a str>,
}

impl<'a> Message<'a> {
    /// Parses one line without its line ending. `None` for a line with no
    /// command, which a bot can only skip.
    pub fn parse(line: &'a str) -> Option<Message<'a>> {
        let mut rest = line;
        // IRCv3 message tags: a bot has no use for them.
        if rest.starts_with('@') {
            rest = rest.split_once(' ')?.1.trim_start_matches(' ');
        }
        let mut source = None;
        if let Some(prefixed) = rest.strip_prefix(':') {
            let (prefix, after) = prefixed.split_once(' ')?;
            source = Some(prefix.split(['!', '@']).next().unwrap_or(prefix));
            rest = after.trim_start_matches(' ');
        }
        let (command, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
        if command.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches(' ');
            if rest.is_empty() {
                break;
            }
            if let Some(trailing) = rest.strip_prefix(':') {
                params.push(trailing);
                break;
            }
            let (param, after) = rest.split_once(' ').unwrap_or((rest, ""));
            params.push(param);
            rest = after;
        }
        Some(Message {
            source,
            command,
            params,
        })
    }

    /// The `n`th parameter, or `""`.
    pub fn param(&self, n: usize) -> &'a str {
        self.params.get(n).copied().unwrap_or("")
    }
}

/// The longest text the bot puts in one PRIVMSG. A server relays at most
/// 512 bytes per line, including the sender's prefix, which it adds.
const MAX_TEXT: usize = 400;

/// Makes `text` safe to send as one trailing parameter: one line, and short
/// enough that the server relays it whole.
pub fn one_line(text: &str) -> String {
    let mut line: String = text
        .split(['\r', '\n'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if line.len() > MAX_TEXT {
        let mut end = MAX_TEXT - '…'.len_utf8();
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

/// How the server compares nicks and channel names, from its ISUPPORT
/// `CASEMAPPING` token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseMapping {
    Ascii,
    /// `[]\~` are the upper case of `{}|^`.
    Rfc1459,
    /// `[]\` are the upper case of `{}|`.
    StrictRfc1459,
}

impl CaseMapping {
    /// The mapping an ISUPPORT token list announces; RFC 1459 if none does,
    /// as the RFC says.
    pub fn from_isupport<'t>(tokens: impl IntoIterator<Item = &'t str>) -> CaseMapping {
        let announced = tokens
            .into_iter()
            .filter_map(|token| token.strip_prefix("CASEMAPPING="))
            .last();
        match announced {
            Some("ascii") => CaseMapping::Ascii,
            Some("strict-rfc1459") => CaseMapping::StrictRfc1459,
            _ => CaseMapping::Rfc1459,
        }
    }

    pub fn eq(self, a: &str, b: &str) -> bool {
        a.len() == b.len()
            && a.chars()
                .zip(b.chars())
                .all(|(x, y)| self.fold(x) == self.fold(y))
    }

    fn fold(self, c: char) -> char {
        match (self, c) {
            (CaseMapping::Rfc1459 | CaseMapping::StrictRfc1459, '[') => '{',
            (CaseMapping::Rfc1459 | CaseMapping::StrictRfc1459, ']') => '}',
            (CaseMapping::Rfc1459 | CaseMapping::StrictRfc1459, '\\') => '|',
            (CaseMapping::Rfc1459, '~') => '^',
            _ => c.to_ascii_lowercase(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefix_command_params_and_trailing() {
        let message = Message::parse(":alice!~a@host PRIVMSG #chan :hello there").unwrap();
        assert_eq!(
            message,
            Message {
                source: Some("alice"),
                command: "PRIVMSG",
                params: vec!["#chan", "hello there"],
            }
        );
    }

    #[test]
    fn parses_tags_server_source_and_middle_params() {
        let message =
            Message::parse("@time=x :irc.test 005 bot CASEMAPPING=ascii NICKLEN=30 :are supported")
                .unwrap();
        assert_eq!(message.source, Some("irc.test"));
        assert_eq!(message.command, "005");
        assert_eq!(
            message.params,
            ["bot", "CASEMAPPING=ascii", "NICKLEN=30", "are supported"]
        );
    }

    #[test]
    fn parses_a_line_without_source_or_params() {
        let ping = Message::parse("PING :irc.test").unwrap();
        assert_eq!((ping.source, ping.command), (None, "PING"));
        assert_eq!(ping.param(0), "irc.test");
        assert_eq!(ping.param(1), "");
        assert_eq!(Message::parse("QUIT").unwrap().params, Vec::<&str>::new());
        assert_eq!(Message::parse(""), None);
        assert_eq!(Message::parse(":only-a-prefix"), None);
    }

    #[test]
    fn one_line_joins_lines_and_truncates_on_a_char_boundary() {
        assert_eq!(one_line("a\r\nb\nc"), "a b c");
        let long = "é".repeat(300);
        let line = one_line(&long);
        assert!(line.len() <= MAX_TEXT, "{} bytes", line.len());
        assert!(line.ends_with('…'));
    }

    #[test]
    fn case_mappings_fold_as_announced() {
        let ascii = CaseMapping::from_isupport(["NICKLEN=30", "CASEMAPPING=ascii"]);
        assert_eq!(ascii, CaseMapping::Ascii);
        assert!(ascii.eq("Alice", "aLICE"));
        assert!(!ascii.eq("a[b", "a{b"));
        let rfc = CaseMapping::from_isupport([]);
        assert_eq!(rfc, CaseMapping::Rfc1459);
        assert!(rfc.eq("A[b]\\~", "a{B}|^"));
        let strict = CaseMapping::from_isupport(["CASEMAPPING=strict-rfc1459"]);
        assert!(strict.eq("[x]", "{X}"));
        assert!(!strict.eq("~", "^"));
    }
}
