//! A command line as the argv systemd would run (systemd.service(5),
//! "COMMAND LINES"): the prefixes, the words with systemd's quoting and
//! C escapes (systemd.syntax(7), "QUOTING"), the unit specifiers
//! (systemd.unit(5), "SPECIFIERS") and `$VAR` / `${VAR}` / `$$`.

/// What the prefixes of an `Exec*=` line ask for.
#[derive(Debug, Default, PartialEq)]
pub struct Prefixes {
    /// `-`: a failing exit counts as success.
    pub ignore_failure: bool,
    /// `@`: the second word is argv[0].
    pub argv0: bool,
    /// `:`: no `$VAR` expansion.
    pub no_env: bool,
    /// `+`: run with full privileges (no User=, Group=, sandbox).
    pub full_privileges: bool,
    /// `!`: credentials are not changed (the program drops them itself);
    /// `!!`: the same, but only where ambient capabilities are missing.
    pub no_setuid: bool,
    pub ambient_fallback: bool,
}

/// Split the prefixes off an `Exec*=` value.
pub fn prefixes(line: &str) -> (Prefixes, &str) {
    let mut p = Prefixes::default();
    let mut rest = line;
    loop {
        if let Some(r) = rest.strip_prefix("!!") {
            p.ambient_fallback = true;
            rest = r;
            continue;
        }
        let Some(c) = rest.chars().next() else { break };
        match c {
            '-' => p.ignore_failure = true,
            '@' => p.argv0 = true,
            ':' => p.no_env = true,
            '+' => p.full_privileges = true,
            '!' => p.no_setuid = true,
            _ => break,
        }
        rest = &rest[1..];
    }
    (p, rest)
}

/// One word of a command line; `separator` when it is a bare `;` (which
/// starts another command).
#[derive(Debug, PartialEq)]
pub struct Word {
    pub text: String,
    pub separator: bool,
}

/// What a C escape stands for: a character (`\n`, `\u00e9`), or one
/// byte (`\xc3`, `\303`), which systemd puts in the word as it is.
enum Escaped {
    Char(char),
    Byte(u8),
}

/// A C escape after the backslash (`n`, `x41`, `101`, `u00e9` ...): what
/// it stands for and how many input characters it used.
fn c_escape(rest: &[char]) -> Option<(Escaped, usize)> {
    let simple = match rest.first()? {
        'a' => '\x07',
        'b' => '\x08',
        'f' => '\x0c',
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'v' => '\x0b',
        's' => ' ',
        c @ ('\\' | '"' | '\'') => *c,
        _ => return number_escape(rest),
    };
    Some((Escaped::Char(simple), 1))
}

fn number_escape(rest: &[char]) -> Option<(Escaped, usize)> {
    let (radix, skip, len) = match rest.first()? {
        'x' => (16, 1, 2),
        'u' => (16, 1, 4),
        'U' => (16, 1, 8),
        '0'..='7' => (8, 0, 3),
        _ => return None,
    };
    let digits: String = rest.get(skip..skip + len)?.iter().collect();
    let n = u32::from_str_radix(&digits, radix).ok()?;
    // systemd refuses a NUL byte in a word.
    if n == 0 {
        return None;
    }
    // \x and octal are one byte each (a UTF-8 character may be written
    // as its bytes); \u and \U a character.
    let e = match rest[0] {
        'x' | '0'..='7' => Escaped::Byte(u8::try_from(n).ok()?),
        _ => Escaped::Char(char::from_u32(n)?),
    };
    Some((e, skip + len))
}

/// The words of `line` with systemd's quoting: `"..."` and `'...'` make
/// one word of what they hold; a backslash escape is decoded as C does
/// when `cunescape` (ExecStart=, Environment=), else the backslash only
/// keeps the next character (a `$VAR` value). An unknown escape or an
/// unterminated quote is an error, as in systemd, unless `relax`.
pub fn split(line: &str, cunescape: bool, relax: bool) -> Result<Vec<Word>, String> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i == chars.len() {
            return Ok(out);
        }
        let bare_semicolon = chars[i] == ';' && chars.get(i + 1).is_none_or(|c| c.is_whitespace());
        let (text, next) = one_word(&chars, i, cunescape, relax)?;
        out.push(Word {
            text,
            separator: bare_semicolon,
        });
        i = next;
    }
}

/// The word starting at `i`: its text and where the next one may start.
fn one_word(
    chars: &[char],
    mut i: usize,
    cunescape: bool,
    relax: bool,
) -> Result<(String, usize), String> {
    // Bytes: `\xc3\xa9` is the two bytes of `é`, as in systemd.
    let mut text: Vec<u8> = Vec::new();
    let push =
        |text: &mut Vec<u8>, c: char| text.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    let done = |text: Vec<u8>, i: usize| {
        String::from_utf8(text).map(|t| (t, i)).map_err(|_| {
            "an escape makes bytes that are not UTF-8, which summond's exec cannot hold".to_string()
        })
    };
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match (quote, c) {
            (None, c) if c.is_whitespace() => return done(text, i),
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (_, '\\') => {
                let rest = &chars[i..];
                if rest.first() == Some(&';') {
                    // `\;` is a literal semicolon (systemd.service(5)).
                    text.push(b';');
                    i += 1;
                } else if !cunescape {
                    match rest.first() {
                        Some(c) => push(&mut text, *c),
                        None if relax => text.push(b'\\'),
                        None => return Err("a backslash ends the line".into()),
                    }
                    i += 1;
                } else {
                    match c_escape(rest) {
                        Some((Escaped::Char(c), used)) => {
                            push(&mut text, c);
                            i += used;
                        }
                        Some((Escaped::Byte(b), used)) => {
                            text.push(b);
                            i += used;
                        }
                        None if relax => text.push(b'\\'),
                        None => {
                            let seq: String = rest.iter().take(2).collect();
                            return Err(format!("the escape \\{seq} is not one systemd knows"));
                        }
                    }
                }
            }
            (_, c) => push(&mut text, c),
        }
    }
    match quote {
        Some(q) if !relax => Err(format!("a {q} quote is not closed")),
        _ => done(text, i),
    }
}

/// The values the unit specifiers of one unit file have here.
pub struct Specifiers<'a> {
    /// The unit's full name as systemd runs it (`ssh@.service` for a
    /// template).
    pub unit_name: &'a str,
    /// The instance (`%i`), if the unit has one known at import; `Err`
    /// says why there is none.
    pub instance: Result<&'a str, &'a str>,
    /// `%t`: /run, or $XDG_RUNTIME_DIR for a user unit; `Err` why not.
    pub runtime_dir: Result<&'a str, &'a str>,
    /// A user unit: the directories of `%S`, `%C`, `%L`, `%E` are the
    /// user's, which the importer does not guess.
    pub user_unit: bool,
}

impl Specifiers<'_> {
    /// `text` with its specifiers expanded, or why one cannot be.
    pub fn expand(&self, text: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let Some(s) = chars.next() else {
                return Err("a `%` ends the value".into());
            };
            out.push_str(&self.value(s)?);
        }
        Ok(out)
    }

    fn value(&self, s: char) -> Result<String, String> {
        let name = self.unit_name;
        let prefix = name.split(['@', '.']).next().unwrap_or(name);
        let per_instance = |what: &str| -> Result<String, String> {
            self.instance
                .map_err(|why| format!("%{s} ({what}) has no value here: {why}"))?;
            Ok(String::new())
        };
        Ok(match s {
            '%' => "%".into(),
            'n' => {
                per_instance("the unit's full name")?;
                name.into()
            }
            'N' => {
                per_instance("the unit's name")?;
                name.rsplit_once('.').map_or(name, |(n, _)| n).into()
            }
            'p' => prefix.into(),
            'i' | 'I' => self
                .instance
                .map(str::to_string)
                .map_err(|why| format!("%{s} (the instance name) has no value here: {why}"))?,
            't' => self
                .runtime_dir
                .map(str::to_string)
                .map_err(|why| format!("%t has no value here: {why}"))?,
            'S' | 'C' | 'L' | 'E' if self.user_unit => {
                return Err(format!(
                    "%{s} is a directory of the user's that the importer does not guess"
                ))
            }
            'S' => "/var/lib".into(),
            'C' => "/var/cache".into(),
            'L' => "/var/log".into(),
            'E' => "/etc".into(),
            'T' => "/tmp".into(),
            'V' => "/var/tmp".into(),
            other => {
                return Err(format!(
                    "the specifier %{other} is not expanded by the importer"
                ))
            }
        })
    }
}

/// The variables a command line used, for the comments and refusals.
#[derive(Debug, Default, PartialEq)]
pub struct Used {
    /// Used and defined.
    pub defined: Vec<String>,
    /// Used but defined nowhere the importer read (systemd makes them
    /// empty).
    pub unset: Vec<String>,
}

impl Used {
    fn note(&mut self, name: &str, found: bool) {
        let list = if found {
            &mut self.defined
        } else {
            &mut self.unset
        };
        if !list.iter().any(|n| n == name) {
            list.push(name.to_string());
        }
    }
}

pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `$VAR` as a word of its own becomes the words of its value (split as
/// systemd splits it: quotes kept together, no word when empty);
/// `${VAR}` anywhere in a word becomes its value, whole; `$$` is `$`; any
/// other `$` is kept (systemd's replace_env_argv). A `${...}` that is not
/// a plain name is an error: the importer does not guess what it means.
pub fn expand_env(
    words: Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
    used: &mut Used,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for word in words {
        if let Some(name) = word
            .strip_prefix('$')
            .filter(|n| !n.starts_with(['{', '$']))
        {
            let value = env(name);
            used.note(name, value.is_some());
            let value = value.unwrap_or_default();
            let split = split(&value, false, true)?;
            out.extend(split.into_iter().map(|w| w.text));
            continue;
        }
        out.push(expand_in_word(&word, env, used)?);
    }
    Ok(out)
}

fn expand_in_word(
    word: &str,
    env: &dyn Fn(&str) -> Option<String>,
    used: &mut Used,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                // Unterminated: kept as written, as systemd does.
                out.push_str(&rest[at..]);
                return Ok(out);
            };
            let name = &body[..end];
            if !is_env_name(name) {
                return Err(format!("`${{{name}}}` is not a plain variable"));
            }
            let value = env(name);
            used.note(name, value.is_some());
            out.push_str(&value.unwrap_or_default());
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<String> {
        split(line, true, false)
            .unwrap()
            .into_iter()
            .map(|w| w.text)
            .collect()
    }

    #[test]
    fn words_are_split_with_systemds_quoting() {
        assert_eq!(
            texts("/usr/sbin/sshd -i -o \"Banner none\" ''"),
            ["/usr/sbin/sshd", "-i", "-o", "Banner none", ""]
        );
        // Escapes, inside quotes too; quotes in the middle of a word.
        assert_eq!(
            texts(r#"a\tb "c\"d" 'e\'f' x"y z"w \x41\101\s\; "#),
            ["a\tb", "c\"d", "e'f", "xy zw", "AA ;"]
        );
        // systemd.service(5)'s example: five arguments to echo.
        let w = split(r"echo / >/dev/null & \; ls", true, false).unwrap();
        assert_eq!(w.len(), 6);
        assert!(w.iter().all(|w| !w.separator));
        let w = split("echo one ; echo two", true, false).unwrap();
        assert!(w[2].separator);
        assert!(split(r"a \q", true, false).is_err());
        // \x and octal escapes are bytes, as in systemd: UTF-8 written as
        // its bytes is that character; a lone byte >= 0x80 is refused.
        assert_eq!(texts(r"\xc3\xa9 \303\251 \u00e9"), ["é", "é", "é"]);
        assert!(split(r"\xe9", true, false).is_err());
        assert!(split("a 'b", true, false).is_err());
        // oidentd's `sh -c` script, continuation already joined.
        assert_eq!(
            texts("/bin/sh -c 'exec /usr/sbin/oidentd -i   $OIDENT_OPTIONS'"),
            [
                "/bin/sh",
                "-c",
                "exec /usr/sbin/oidentd -i   $OIDENT_OPTIONS"
            ]
        );
    }

    #[test]
    fn prefixes_are_read() {
        let (p, rest) = prefixes("-@/bin/x x");
        assert!(p.ignore_failure && p.argv0 && !p.no_env);
        assert_eq!(rest, "/bin/x x");
        let (p, rest) = prefixes("!!:/bin/x");
        assert!(p.ambient_fallback && p.no_env && !p.no_setuid);
        assert_eq!(rest, "/bin/x");
    }

    /// systemd's own table (test-env-util.c, replace_env_argv) with
    /// FOO="BAR BAR", BAR=waldo.
    #[test]
    fn variables_are_expanded_as_systemd_does() {
        let env = |n: &str| match n {
            "FOO" => Some("BAR BAR".to_string()),
            "BAR" => Some("waldo".to_string()),
            "OPTS" => Some("-o 'Banner none' -4".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let line = [
            "FOO$FOO",
            "FOO$FOOFOO",
            "FOO${FOO}$FOO",
            "FOO${FOO}",
            "${FOO}",
            "$FOO",
            "$FOO$FOO",
            "${FOO}${BAR}",
            "${FOO",
            "FOO$$${FOO}",
            "$$FOO${FOO}",
            "$OPTS",
            "$EMPTY",
            "${EMPTY}",
        ];
        let mut used = Used::default();
        let out = expand_env(
            line.iter().map(|s| s.to_string()).collect(),
            &env,
            &mut used,
        )
        .unwrap();
        assert_eq!(
            out,
            [
                "FOO$FOO",
                "FOO$FOOFOO",
                "FOOBAR BAR$FOO",
                "FOOBAR BAR",
                "BAR BAR",
                "BAR",
                "BAR",
                "BAR BARwaldo",
                "${FOO",
                "FOO$BAR BAR",
                "$FOOBAR BAR",
                "-o",
                "Banner none",
                "-4",
                "",
            ]
        );
        assert_eq!(used.unset, ["FOO$FOO"]);
        assert!(expand_env(vec!["${FOO:-x}".into()], &env, &mut used).is_err());
    }

    #[test]
    fn specifiers_are_expanded_or_refused() {
        let sp = Specifiers {
            unit_name: "ssh@.service",
            instance: Err("one per connection"),
            runtime_dir: Ok("/run"),
            user_unit: false,
        };
        assert_eq!(
            sp.expand("%t/%p.sock %% %S").as_deref(),
            Ok("/run/ssh.sock % /var/lib")
        );
        assert!(sp.expand("%i").unwrap_err().contains("one per connection"));
        assert!(sp.expand("%n").is_err());
        assert!(sp.expand("%H").is_err());
        let sp = Specifiers {
            unit_name: "gpg-agent.socket",
            instance: Ok(""),
            runtime_dir: Err("XDG_RUNTIME_DIR is not set"),
            user_unit: true,
        };
        assert_eq!(
            sp.expand("%N %n").as_deref(),
            Ok("gpg-agent gpg-agent.socket")
        );
        assert!(sp.expand("%t/x").unwrap_err().contains("XDG_RUNTIME_DIR"));
    }
}
