"""mailserver.imap.parser: tokens, literals, limits, resynchronisation, and fuzzing."""
import random

import pytest

from mailserver.imap.parser import MAX_DEPTH, Bad, CommandParser, Fatal, LiteralPending
from mailserver.imap.syntax import Atom, Command, PList, String


def events(data, parser=None, **limits):
    """Every event the parser gives for `data`, answering each LiteralPending with "+"."""
    parser = parser or CommandParser(**limits)
    parser.feed(data)
    out = []
    while (event := parser.next_command()) is not None:
        out.append(event)
        if isinstance(event, LiteralPending):
            parser.continue_literal()
        if isinstance(event, Fatal):
            break
    return out


def one(data, parser=None, **limits):
    [event] = events(data, parser, **limits)
    return event


def test_simple_commands_and_upper_cased_names():
    assert events(b"a1 noop\r\nA2 CAPABILITY\r\n") == [
        Command("a1", "NOOP", ()), Command("A2", "CAPABILITY", ())]


def test_uid_command_keeps_its_verb_in_the_arguments():
    assert one(b"7 uid fetch 1:* (FLAGS)\r\n") == Command(
        "7", "UID", (Atom("fetch"), Atom("1:*"), PList((Atom("FLAGS"),))))


def test_bare_lf_and_empty_lines():
    assert events(b"\r\n\na NOOP\n\r\nb NOOP\r\n") == [Command("a", "NOOP", ()), Command("b", "NOOP", ())]


def test_quoted_strings_with_escapes_and_utf8():
    command = one('a LOGIN "jo\\"e" "p\\\\w d" "Élise"\r\n'.encode())
    assert command.args == (String(b'jo"e'), String(b"p\\w d"), String("Élise".encode()))


@pytest.mark.parametrize("line", [
    b'a LOGIN "unterminated\r\n',
    b'a LOGIN "bad \\n escape" x\r\n',
    b'a LOGIN "nul \x00" x\r\n',
    b'a LOGIN "a""b"\r\n',
])
def test_bad_quoted_strings(line):
    assert isinstance(one(line), Bad) and one(line).tag == "a"


def test_atoms_flags_wildcards_and_nil():
    command = one(b"a STORE 1,3:5,7:* +FLAGS (\\Seen \\* $Junk) NIL % * foo]bar\r\n")
    assert command.args == (
        Atom("1,3:5,7:*"), Atom("+FLAGS"), PList((Atom("\\Seen"), Atom("\\*"), Atom("$Junk"))),
        Atom("NIL"), Atom("%"), Atom("*"), Atom("foo]bar"))


def test_fetch_sections_are_one_atom():
    command = one(b'a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From "To" "X\\"y")]<0.100> BODY[1.2.MIME] BINARY[]<5>)\r\n')
    assert command.args[1] == PList((
        Atom('BODY.PEEK[HEADER.FIELDS (From "To" "X\\"y")]<0.100>'), Atom("BODY[1.2.MIME]"), Atom("BINARY[]<5>")))
    assert one(b"a FETCH 1 BODY[x[y]z]\r\n").args[1] == Atom("BODY[x[y]z]")


def test_brackets_are_atom_and_astring_chars():
    """Item 4 of issue 12: "[" is an ATOM-CHAR, "]" an ASTRING-CHAR (RFC 3501 §9)."""
    assert one(b"a SELECT foo[bar\r\n").args == (Atom("foo[bar"),)
    assert one(b"a SELECT foo]bar[\r\n").args == (Atom("foo]bar["),)
    assert one(b"a LIST \"\" !#$&'+,-.0123456789:;<=>?@^_`|[}%*\r\n").args[1] == \
        Atom("!#$&'+,-.0123456789:;<=>?@^_`|[}%*")
    assert one(b"a FETCH 1 BODY[HEADER\r\n").args[1] == Atom("BODY[HEADER")  # FETCH refuses it


@pytest.mark.parametrize("line", [
    b'a FETCH 1 BODY["]"\r\n',  # the "]" is quoted: unclosed, and a quote in an atom
    b"a FETCH 1 BODY[\xc3\xa9]\r\n",  # 8-bit in a section
])
def test_bad_sections(line):
    assert isinstance(one(line), Bad)


def test_nested_lists():
    assert one(b"a SEARCH (OR (SEEN) (FROM x)) ()\r\n").args == (
        PList((Atom("OR"), PList((Atom("SEEN"),)), PList((Atom("FROM"), Atom("x"))))), PList(()))


@pytest.mark.parametrize("line, message", [
    (b"a SEARCH (SEEN\r\n", "missing )"),
    (b"a SEARCH SEEN)\r\n", "unexpected )"),
    (b"a SEARCH (a)(b)\r\n", "missing space between arguments"),
    (b"a SEARCH x{y\r\n", "invalid character"),
    (b"a SELECT caf\xc3\xa9\r\n", "invalid character"),
    (b"a SELECT \x01x\r\n", "invalid character"),
])
def test_syntax_errors_are_bad_with_the_tag(line, message):
    assert one(line) == Bad("a", message)


def test_nesting_is_bounded():
    depth_ok = b"a X " + b"(" * (MAX_DEPTH) + b")" * (MAX_DEPTH) + b"\r\n"
    too_deep = b"a X " + b"(" * (MAX_DEPTH + 1) + b")" * (MAX_DEPTH + 1) + b"\r\n"
    assert isinstance(one(depth_ok), Command)
    assert one(too_deep) == Bad("a", "lists nested too deeply")


@pytest.mark.parametrize("line, bad", [
    (b"a\r\n", Bad("a", "missing command name")),
    (b"a  NOOP\r\n", Bad("a", "missing command name")),
    (b"a N\"OOP\r\n", Bad("a", "invalid command name")),
    (b"* OK hello\r\n", Bad(None, "invalid tag")),
    (b"+ NOOP\r\n", Bad(None, "invalid tag")),
    (b" a NOOP\r\n", Bad(None, "invalid tag")),
    (b"\xff NOOP\r\n", Bad(None, "invalid tag")),
])
def test_bad_tags_and_command_names(line, bad):
    assert one(line) == bad


def test_synchronising_literal_waits_for_the_session():
    parser = CommandParser()
    parser.feed(b"a LOGIN {4}\r\n")
    assert parser.next_command() == LiteralPending("a", "LOGIN", 4, False)
    parser.feed(b"joe!")
    assert parser.next_command() is None  # not answered yet: the octets stay unparsed
    parser.continue_literal()
    assert parser.next_command() is None
    parser.feed(b" {2}\r\n")
    assert parser.next_command() == LiteralPending("a", "LOGIN", 2, False)
    parser.continue_literal()
    parser.feed(b"pw\r\n")
    assert parser.next_command() == Command(
        "a", "LOGIN", (String(b"joe!", literal=True), String(b"pw", literal=True)))


def test_literal_bytes_are_raw():
    body = b"line1\r\n{5}\r\na BYE\r\n) ( \"\r\n"
    command = one(b"a APPEND INBOX (\\Seen) {%d+}\r\n" % len(body) + body + b" x\r\n")
    assert command.args == (Atom("INBOX"), PList((Atom("\\Seen"),)), String(body, literal=True), Atom("x"))


def test_literals_inside_lists_and_empty_literals():
    assert one(b"a X ({0+}\r\n {1+}\r\n))\r\n").args == (
        PList((String(b"", literal=True), String(b")", literal=True))),)


def test_non_synchronising_and_binary_literals():
    parser = CommandParser()
    assert events(b"a APPEND x {3-}\r\nabc ~{2+}\r\n\x00\xff ~{1}\r\n", parser) == [
        LiteralPending("a", "APPEND", 1, True)]
    parser.feed(b"z\r\n")
    assert parser.next_command() == Command("a", "APPEND", (
        Atom("x"), String(b"abc", literal=True), String(b"\x00\xff", literal=True, binary=True),
        String(b"z", literal=True, binary=True)))


def test_refused_literal_drops_the_command():
    parser = CommandParser()
    parser.feed(b"a APPEND INBOX {10}\r\n")
    assert parser.next_command() == LiteralPending("a", "APPEND", 10, False)
    parser.refuse_literal()
    assert parser.buffered == 0
    assert events(b"b NOOP\r\n", parser) == [Command("b", "NOOP", ())]


def test_answering_without_a_pending_literal_is_a_programming_error():
    with pytest.raises(RuntimeError):
        CommandParser().continue_literal()
    with pytest.raises(RuntimeError):
        CommandParser().refuse_literal()


def test_literal_fed_byte_by_byte():
    data = b"a LOGIN {3+}\r\nabc {2+}\r\nde\r\nb NOOP\r\n"
    parser = CommandParser()
    got = []
    for i in range(len(data)):
        parser.feed(data[i:i + 1])
        while (event := parser.next_command()) is not None:
            got.append(event)
    assert got == events(data)
    assert got[1] == Command("b", "NOOP", ())


def test_sync_literal_over_max_literal_is_left_to_the_session():
    parser = CommandParser(max_literal=10)
    parser.feed(b"a APPEND INBOX {11}\r\n")
    assert parser.next_command() == LiteralPending("a", "APPEND", 11, False)
    parser.refuse_literal()  # the session replies NO [TOOBIG]
    assert events(b"b NOOP\r\n", parser) == [Command("b", "NOOP", ())]
    parser.feed(b"c APPEND INBOX {11}\r\n")
    assert isinstance(parser.next_command(), LiteralPending)
    parser.continue_literal()  # the session should have refused: not held, the connection ends
    assert parser.next_command() == Fatal("literal too large")


def test_non_sync_literal_over_max_literal_is_fatal():
    parser = CommandParser(max_literal=10)
    assert events(b"a APPEND INBOX {11+}\r\n" + b"x" * 11, parser) == [Fatal("literal too large")]
    parser.feed(b"b NOOP\r\n")
    assert parser.next_command() == Fatal("literal too large")
    assert parser.buffered == 0


def test_limits_may_be_raised_after_login():
    parser = CommandParser(max_literal=10)
    assert one(b"a LOGIN u {11+}\r\n", parser=parser) == Fatal("literal too large")
    parser = CommandParser(max_literal=10)
    parser.max_literal = 20
    assert one(b"a LOGIN u {11+}\r\n" + b"x" * 11 + b"\r\n", parser=parser).args[1] == String(b"x" * 11, literal=True)


def test_command_size_limit():
    literal = b"a X {8+}\r\n12345678 {8+}\r\n12345678 {8+}\r\n"
    assert events(literal + b"12345678\r\n", max_command=30) == [Fatal("command too long")]
    # A synchronising literal that would overflow is refused before the client sends it.
    assert events(b"a X {8+}\r\n12345678 {20}\r\nb NOOP\r\n", max_command=30) == [
        Bad("a", "command too long"), Command("b", "NOOP", ())]


def test_line_limit():
    assert one(b"a X " + b"y" * 20 + b"\r\n", max_line=20) == Fatal("line too long")
    assert one(b"a X " + b"y" * 16 + b"\r\n", max_line=20) == Command("a", "X", (Atom("y" * 16),))
    parser = CommandParser(max_line=20)
    parser.feed(b"a" * 21)
    assert parser.next_command() is None  # the CRLF may still come
    parser.feed(b"a")
    assert parser.next_command() == Fatal("line too long")


def test_bad_head_with_sync_literal_is_refused_at_once():
    assert events(b"* APPEND {5}\r\nb NOOP\r\n") == [Bad(None, "invalid tag"), Command("b", "NOOP", ())]


def test_non_sync_literal_of_a_bad_command_is_never_run_as_commands():
    smuggled = b"x DELETE INBOX\r\n"
    data = b"* APPEND {%d+}\r\n" % len(smuggled) + smuggled + b"\r\nb NOOP\r\n"
    assert events(data) == [Bad(None, "invalid tag"), Command("b", "NOOP", ())]


def test_literal_glued_to_an_atom_is_bad():
    assert one(b"a LOGIN x{1+}\r\ny\r\n") == Bad("a", "missing space before literal")
    assert one(b"a LOGIN {1+}\r\nyz\r\n") == Bad("a", "missing space between arguments")


def test_next_line_raw_mode():
    parser = CommandParser(max_line=10)
    parser.feed(b"a IDLE\r\nDONE\r\nb NOOP\r\n")
    assert parser.next_command() == Command("a", "IDLE", ())
    assert parser.next_line() == b"DONE"
    assert parser.next_command() == Command("b", "NOOP", ())
    assert parser.next_line() is None
    parser.feed(b"dGVzdA==\n" + b"x" * 12)
    assert parser.next_line() == b"dGVzdA=="
    assert parser.next_line() == Fatal("line too long")


def test_discard_buffer_after_starttls():
    parser = CommandParser()
    parser.feed(b"a STARTTLS\r\nb LOGIN joe secret\r\n")
    assert parser.next_command() == Command("a", "STARTTLS", ())
    parser.discard_buffer()
    assert parser.buffered == 0
    assert events(b"c NOOP\r\n", parser) == [Command("c", "NOOP", ())]


def test_buffered_counts_unparsed_and_partial_command():
    parser = CommandParser()
    parser.feed(b"a APPEND x {10+}\r\n12345")
    assert parser.buffered == 23
    assert parser.next_command() is None
    assert parser.buffered == len(b"a APPEND x ") + 5
    parser.feed(b"67890\r\n")
    assert isinstance(parser.next_command(), Command)
    assert parser.buffered == 0


# Fuzzing: random bytes and mutated valid commands, fed in random chunks.

SAMPLES = [
    b"a1 LOGIN {3}\r\njoe {6+}\r\nsecret\r\n",
    b'a2 FETCH 1:*,4 (FLAGS BODY.PEEK[HEADER.FIELDS (From "To")]<0.10>)\r\n',
    b"a3 APPEND INBOX (\\Seen) \"1-Feb-2024 10:00:00 +0100\" ~{4+}\r\n\x00\x01\r\n\r\n",
    b'a4 SEARCH CHARSET UTF-8 OR (FROM "\xc3\xa9") (NOT SEEN) UID 1:5\r\n',
    b"a5 UID STORE 1 +FLAGS.SILENT (\\Deleted)\r\n",
    b"a6 LIST \"\" %\r\nDONE\r\n",
]
LIMITS = {"max_line": 100, "max_literal": 60, "max_command": 250}
PIECES = [b"a", b"B1", b" ", b" ", b"(", b")", b"[", b"]", b'"', b"\\", b"{3}\r\n", b"{2+}\r\n", b"~{1-}\r\n",
          b"\r\n", b"\n", b"NIL", b"1:*", b"\\Seen", b"BODY[", b"<0.5>", b"\x00", b"\xc3\xa9", b"*", b"+"]


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        position = rng.randint(0, len(data))
        choice = rng.random()
        if choice < 0.3:
            data[position:position + 1] = b""
        elif choice < 0.6:
            data[position:position] = bytes([rng.choice(b'(){}[]<>"\\+~ \r\n\x00\xff*%:0123456789')])
        elif choice < 0.8:
            data[position:position] = rng.choice([b"{%d}\r\n" % rng.randint(0, 90), b"{99999999999+}", b"~{3-}\r\n"])
        else:
            data[position:position] = rng.randbytes(rng.randint(1, 70))
    return bytes(data)


def drive(rng, stream):
    """Feed `stream` in random chunks, answering literals at random; check the invariants."""
    parser = CommandParser(**LIMITS)
    bound = LIMITS["max_command"] + LIMITS["max_line"] + 2
    position = 0
    while position < len(stream):
        chunk = rng.randint(1, 50)
        parser.feed(stream[position:position + chunk])
        position += chunk
        while True:
            event = parser.next_line() if rng.random() < 0.05 else parser.next_command()
            assert event is None or isinstance(event, (bytes, Command, LiteralPending, Bad, Fatal))
            if isinstance(event, LiteralPending):
                parser.continue_literal() if rng.random() < 0.7 else parser.refuse_literal()
            if event is None or isinstance(event, Fatal):
                break
        assert parser.buffered <= bound + chunk
        if isinstance(event, Fatal):
            return


def test_fuzz_random_and_mutated_input_never_raises_and_stays_bounded():
    rng = random.Random(3501)
    for _ in range(5000):
        if rng.random() < 0.2:
            stream = rng.randbytes(rng.randint(0, 300))
        elif rng.random() < 0.3:
            stream = b"t X " + b"".join(rng.choices(PIECES, k=rng.randint(1, 60))) + b"\r\n"
        else:
            stream = b"".join(mutate(rng, rng.choice(SAMPLES)) for _ in range(rng.randint(1, 4)))
        drive(rng, stream)


def test_fuzz_chunking_does_not_change_the_events():
    rng = random.Random(9051)
    for _ in range(1000):
        stream = b"".join(mutate(rng, rng.choice(SAMPLES)) for _ in range(rng.randint(1, 3)))
        parser, got, position = CommandParser(**LIMITS), [], 0
        while position < len(stream) and not (got and isinstance(got[-1], Fatal)):
            chunk = rng.randint(1, 20)
            got += events(stream[position:position + chunk], parser)
            position += chunk
        assert got == events(stream, **LIMITS)


def test_unmutated_samples_parse():
    for sample in SAMPLES[:-1]:  # the last one ends with IDLE's DONE, a raw line
        assert [type(e) for e in events(sample) if not isinstance(e, LiteralPending)] == [Command]
