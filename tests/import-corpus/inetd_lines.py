#!/usr/bin/env python3
"""Print the inetd.conf entries a maintainer script adds with
`update-inetd --add ENTRY`, as update-inetd would write them.

Used by fetch.sh: `inetd_lines.py POSTINST PACKAGE`. The script is read,
not run: ENTRY is one shell word ('...', "..." or bare), its $VAR and
${VAR} taken from the script's own plain assignments (the last above the
call, else the first below it, for a function called later); a variable
the script does not assign (a debconf answer) and a command substitution
are empty, and a comment above the entry says so, except `$(basename $0
...)`, which is the package's name (the script is PACKAGE.postinst). update-inetd turns each two-character `\\t` into a tab
(DebianNet.pm's add_service) and writes the entry as it is, so an entry
that starts with `#` is a comment in inetd.conf and `#<off>#` a disabled
line.
"""

import re
import sys

ASSIGN = re.compile(r"^\s*(?:local\s+|export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
SUBST = re.compile(r"\$\(([^)]*)\)|`([^`]*)`")


class Script:
    """A maintainer script's plain assignments, by line."""

    def __init__(self, text, package):
        # Backslash-newline joins lines, as the shell does outside quotes;
        # each joined line keeps the number of its first.
        self.lines = []
        pending = None
        for number, line in enumerate(text.split("\n"), 1):
            if pending is None:
                pending = (number, "")
            if line.endswith("\\"):
                pending = (pending[0], pending[1] + line[:-1] + " ")
                continue
            self.lines.append((pending[0], pending[1] + line))
            pending = None
        self.package = package
        self.assignments = {}
        for number, line in self.lines:
            m = ASSIGN.match(line)
            if m and "update-inetd" not in line:
                self.assignments.setdefault(m.group(1), []).append((number, m.group(2)))

    def value(self, name, at, unresolved, depth=0):
        """NAME as the shell has it at line AT: the last assignment above
        it, else (a function called later) the first one below it."""
        found = self.assignments.get(name, [])
        above = [a for a in found if a[0] < at]
        pick = above[-1] if above else (found[0] if found else None)
        if pick is None or depth > 8:
            unresolved.add("$" + name)
            return ""
        try:
            word, _ = self.word(pick[1], pick[0], unresolved, depth + 1)
        except (ValueError, IndexError, AttributeError):
            unresolved.add("$" + name)
            return ""
        return word

    def expand(self, text, at, unresolved, depth):
        def subst(m):
            command = m.group(1) or m.group(2)
            if "basename $0" in command:
                return self.package  # the script is PACKAGE.postinst
            unresolved.add("$(" + command.strip() + ")")
            return ""

        text = SUBST.sub(subst, text)
        return VAR.sub(
            lambda m: self.value(m.group(1) or m.group(2), at, unresolved, depth), text
        )

    def word(self, text, at, unresolved, depth=0):
        """The first shell word of TEXT, expanded; and the rest of it."""
        text = text.lstrip()
        out = []
        i = 0
        while i < len(text) and text[i] not in " \t;&|)":
            c = text[i]
            if c == "'":
                end = text.index("'", i + 1)
                out.append(text[i + 1:end])
                i = end + 1
            elif c == '"':
                i += 1
                chunk = []
                while text[i] != '"':
                    if text[i] == "\\" and text[i + 1] in '"\\$`':
                        chunk.append(text[i + 1])
                        i += 2
                        continue
                    if text[i] == "`":
                        end = text.index("`", i + 1)
                        chunk.append(text[i:end + 1])
                        i = end + 1
                        continue
                    chunk.append(text[i])
                    i += 1
                out.append(self.expand("".join(chunk), at, unresolved, depth))
                i += 1
            elif c == "\\":
                out.append(text[i + 1])
                i += 2
            else:
                m = re.match(r"(\$\([^)]*\)|`[^`]*`|[^\s'\"\\;&|)$`]+|\$\{?\w+\}?)", text[i:])
                out.append(self.expand(m.group(0), at, unresolved, depth))
                i += len(m.group(0))
        return "".join(out), text[i:]

    def entries(self):
        for number, line in self.lines:
            if not re.search(r"(update-inetd|UPDATE_INETD)\b.*--add", line):
                continue
            rest = line.split("--add", 1)[1]
            unresolved = set()
            # Options may stand between --add and its entry.
            while True:
                word, rest = self.word(rest, number, unresolved)
                if word in ("--group", "--comment-chars", "--pattern"):
                    _, rest = self.word(rest, number, unresolved)
                    continue
                if not word.startswith("--"):
                    break
            yield number, word.replace("\\t", "\t"), sorted(unresolved)


def main():
    path, package = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8", errors="replace") as f:
        script = Script(f.read(), package)
    name = path.rsplit("/", 1)[-1]
    for number, entry, unresolved in script.entries():
        print(f"# {name} line {number}: update-inetd --add")
        if unresolved:
            print(f"# ({', '.join(unresolved)}: known at install time only, empty here)")
        print(entry)


if __name__ == "__main__":
    main()
