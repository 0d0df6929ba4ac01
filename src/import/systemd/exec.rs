//! `ExecStart=` as an argv: the command line's words and the unit
//! specifiers (`%n`, `%N`, `%p`, `%t`, `%%`).

/// Words of a command line, with "double" and 'single' quotes.
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Expand the specifiers a socket-activated service line may use.
pub fn specifiers(text: &str, unit_name: &str) -> Result<String, char> {
    let prefix = unit_name.split(['@', '.']).next().unwrap_or(unit_name);
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('n') => out.push_str(unit_name),
            Some('N') => out.push_str(unit_name.rsplit_once('.').map_or(unit_name, |(n, _)| n)),
            Some('p') => out.push_str(prefix),
            Some('t') => out.push_str("/run"),
            Some(other) => return Err(other),
            None => out.push('%'),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_and_specifiers() {
        assert_eq!(
            words("/usr/sbin/sshd -i -o \"Banner none\" ''"),
            ["/usr/sbin/sshd", "-i", "-o", "Banner none", ""]
        );
        assert_eq!(
            specifiers("%t/%N.sock %% %p", "ssh@.service"),
            Ok("/run/ssh@.sock % ssh".into())
        );
        assert_eq!(specifiers("%i", "x.service"), Err('i'));
    }
}
