/**
 * The replication command language of a PostgreSQL 15 walsender (the
 * grammar of src/backend/replication/repl_gram.y and repl_scanner.l), for
 * the commands a physical walsender understands.
 *
 * Behaviour checked against a real PostgreSQL 15.18 walsender; where it
 * differs from what one might expect:
 *
 * - Keywords: PostgreSQL 15 matches them case-SENSITIVELY (upper case only;
 *   `identify_system` is SQL to it and gets 0A000 "cannot execute SQL
 *   commands in WAL sender for physical replication"). We match them in any
 *   case, as SQL keywords are, so that an operator typing
 *   `identify_system;` in psql gets an answer; in name positions a keyword
 *   is taken as a plain name (`SHOW timeline`, a slot called `wait`). Every
 *   command PostgreSQL accepts parses here to the same thing. Only the 8
 *   command keywords IDENTIFY_SYSTEM, BASE_BACKUP, START_REPLICATION,
 *   CREATE_REPLICATION_SLOT, DROP_REPLICATION_SLOT, READ_REPLICATION_SLOT,
 *   TIMELINE_HISTORY and SHOW as the first token make a replication command
 *   (replication_scanner_is_replication_command); anything else is SQL.
 * - Identifiers: unquoted ones are lower-cased (ASCII only); "quoted" ones
 *   keep their case. Both are truncated to 63 bytes (NAMEDATALEN - 1;
 *   PostgreSQL also sends a NOTICE about it, we do not). PG 15 has NO `""`
 *   escape inside quoted identifiers (`"a""b"` is two identifiers) and
 *   accepts the empty identifier `""`.
 * - Every grammar error is just "syntax error" (no "at or near"); an open
 *   quote is "unterminated quoted string" for '...' and "..." alike.
 * - Numbers are strtoul() then truncated to uint32, so `TIMELINE 4294967297`
 *   is timeline 1 and `TIMELINE 4294967296` is "invalid timeline 0".
 * - LSN halves: PostgreSQL 15 silently truncates a half that does not fit in
 *   32 bits; we reject it with 42601 "invalid streaming start location"
 *   (leading zeros are fine).
 * - CREATE_REPLICATION_SLOT options are validated here the way walsender.c
 *   (parseCreateReplSlotOptions) does before anything else: duplicates or
 *   options of the other slot kind → 42601 "conflicting or redundant
 *   options", bad booleans → 42601 "reserve_wal requires a Boolean value",
 *   unknown names → XX000 "unrecognized option: foo", bad snapshot actions
 *   → 22023.
 * - An empty query, or one of only blanks and semicolons, is not a
 *   replication command for PostgreSQL either: a physical walsender answers
 *   it with the same 0A000 error as SQL. We return `{ kind: 'empty' }` so the
 *   caller can decide.
 */

import { PgError, SQLSTATE } from './errors.js';

export type ReplicationCommand =
  | { kind: 'identify_system' }
  | { kind: 'show'; name: string }
  | { kind: 'timeline_history'; tli: number }
  | { kind: 'read_replication_slot'; slot: string }
  | {
      kind: 'create_replication_slot';
      slot: string;
      temporary: boolean;
      logical: boolean;
      plugin: string | null;
      reserveWal: boolean;
      options: Record<string, string | boolean | number>;
    }
  | { kind: 'drop_replication_slot'; slot: string; wait: boolean }
  | {
      kind: 'start_replication';
      slot: string | null;
      logical: boolean;
      start: bigint;
      tli: number | null;
      options: Record<string, string | null>;
    }
  | { kind: 'base_backup' }
  | { kind: 'sql'; text: string }
  | { kind: 'empty' };

/** NAMEDATALEN - 1: identifiers longer than this (in bytes) are truncated. */
const MAX_IDENTIFIER_BYTES = 63;

/** The keywords of the PG 15 replication scanner (matched case-sensitively). */
const KEYWORDS = [
  'BASE_BACKUP',
  'IDENTIFY_SYSTEM',
  'READ_REPLICATION_SLOT',
  'SHOW',
  'TIMELINE',
  'START_REPLICATION',
  'CREATE_REPLICATION_SLOT',
  'DROP_REPLICATION_SLOT',
  'TIMELINE_HISTORY',
  'PHYSICAL',
  'RESERVE_WAL',
  'LOGICAL',
  'SLOT',
  'TEMPORARY',
  'TWO_PHASE',
  'EXPORT_SNAPSHOT',
  'NOEXPORT_SNAPSHOT',
  'USE_SNAPSHOT',
  'WAIT',
] as const;
type Keyword = (typeof KEYWORDS)[number];
const KEYWORD_SET: ReadonlySet<string> = new Set(KEYWORDS);

/** First tokens that make a string a replication command (the rest is SQL). */
const COMMAND_KEYWORDS: ReadonlySet<Keyword> = new Set<Keyword>([
  'IDENTIFY_SYSTEM',
  'BASE_BACKUP',
  'START_REPLICATION',
  'CREATE_REPLICATION_SLOT',
  'DROP_REPLICATION_SLOT',
  'READ_REPLICATION_SLOT',
  'TIMELINE_HISTORY',
  'SHOW',
]);

/** Keywords that may name a generic option (repl_gram.y ident_or_keyword; PG 15 lacks READ_REPLICATION_SLOT). */
const OPTION_NAME_KEYWORDS: ReadonlySet<Keyword> = new Set<Keyword>(KEYWORDS.filter((k) => k !== 'READ_REPLICATION_SLOT'));

type Token =
  | { t: 'kw'; kw: Keyword; word: string }
  | { t: 'ident'; value: string }
  | { t: 'sconst'; value: string }
  | { t: 'uconst'; value: number }
  | { t: 'recptr'; hi: string; lo: string }
  | { t: 'char'; ch: string }
  | { t: 'eof' };

function syntaxError(message = 'syntax error'): PgError {
  return new PgError(SQLSTATE.SYNTAX_ERROR, message);
}

const isSpace = (c: string): boolean => c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\f' || c === '\v';
const isDigit = (c: string): boolean => c >= '0' && c <= '9';
const isHex = (c: string): boolean => isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
// ident_start [A-Za-z\200-\377_]: every byte of a multi-byte UTF-8 character is >= 0x80.
const isIdentStart = (c: string): boolean => (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c === '_' || c.charCodeAt(0) >= 0x80;
const isIdentCont = (c: string): boolean => isIdentStart(c) || isDigit(c) || c === '$';

/** truncate_identifier(): at most 63 bytes of UTF-8, cut at a character boundary. */
function truncateIdentifier(s: string): string {
  if (Buffer.byteLength(s, 'utf8') <= MAX_IDENTIFIER_BYTES) return s;
  let out = '';
  let bytes = 0;
  for (const ch of s) {
    const n = Buffer.byteLength(ch, 'utf8');
    if (bytes + n > MAX_IDENTIFIER_BYTES) break;
    out += ch;
    bytes += n;
  }
  return out;
}

/** downcase_truncate_identifier(): ASCII-only lower-casing (the server encoding is UTF-8), then truncation. */
function downcaseIdentifier(s: string): string {
  return truncateIdentifier(s.replace(/[A-Z]+/g, (m) => m.toLowerCase()));
}

/** strtoul() of a digit string (saturating at 2^64-1, as on LP64), stored into a uint32. */
function toUint32(digits: string): number {
  let v = BigInt(digits);
  const ulongMax = (1n << 64n) - 1n;
  if (v > ulongMax) v = ulongMax;
  return Number(v & 0xffff_ffffn);
}

/** A lazy scanner: like flex, it only reads as far as the parser asks, so errors come out in PostgreSQL's order. */
class Scanner {
  private pos = 0;

  constructor(private readonly s: string) {}

  next(): Token {
    const s = this.s;
    while (this.pos < s.length && isSpace(s[this.pos]!)) this.pos++;
    if (this.pos >= s.length) return { t: 'eof' };
    const start = this.pos;
    const c = s[start]!;

    if (c === "'") return this.quoted("'", (value) => ({ t: 'sconst', value }));
    if (c === '"') return this.quoted('"', (value) => ({ t: 'ident', value: truncateIdentifier(value) }));

    // Longest match among {hexdigit}+/{hexdigit}+, {digit}+ and {identifier}
    // (keywords win a tie with identifiers). A RECPTR, when it matches, is
    // always the longest, since the others cannot contain '/'.
    let i = start;
    while (i < s.length && isHex(s[i]!)) i++;
    if (i > start && s[i] === '/' && i + 1 < s.length && isHex(s[i + 1]!)) {
      let j = i + 1;
      while (j < s.length && isHex(s[j]!)) j++;
      this.pos = j;
      return { t: 'recptr', hi: s.slice(start, i), lo: s.slice(i + 1, j) };
    }
    if (isDigit(c)) {
      let j = start;
      while (j < s.length && isDigit(s[j]!)) j++;
      this.pos = j;
      return { t: 'uconst', value: toUint32(s.slice(start, j)) };
    }
    if (isIdentStart(c)) {
      let j = start + 1;
      while (j < s.length && isIdentCont(s[j]!)) j++;
      this.pos = j;
      const word = s.slice(start, j);
      const upper = word.replace(/[a-z]+/g, (m) => m.toUpperCase());
      if (KEYWORD_SET.has(upper)) return { t: 'kw', kw: upper as Keyword, word };
      return { t: 'ident', value: downcaseIdentifier(word) };
    }
    // Any other character is a token by itself (',', ';', '(', ')', '.', ...).
    const cp = s.codePointAt(start)!;
    const ch = String.fromCodePoint(cp);
    this.pos = start + ch.length;
    return { t: 'char', ch };
  }

  /** '...' with '' for a quote; "..." with no escape at all (as in PG 15). */
  private quoted(q: string, make: (value: string) => Token): Token {
    const s = this.s;
    let i = this.pos + 1;
    let value = '';
    for (;;) {
      const end = s.indexOf(q, i);
      if (end < 0) throw syntaxError('unterminated quoted string');
      value += s.slice(i, end);
      if (q === "'" && s[end + 1] === "'") {
        value += "'";
        i = end + 2;
        continue;
      }
      this.pos = end + 1;
      return make(value);
    }
  }
}

/** A generic option as the grammar produced it (DefElem): no argument, a string, or an integer. */
interface DefElem {
  name: string;
  arg: { str: string } | { int: number } | null;
}

class Parser {
  private la: Token | null = null;

  constructor(private readonly scanner: Scanner) {}

  peek(): Token {
    this.la ??= this.scanner.next();
    return this.la;
  }

  take(): Token {
    const t = this.peek();
    this.la = null;
    return t;
  }

  isKw(kw: Keyword): boolean {
    const t = this.peek();
    return t.t === 'kw' && t.kw === kw;
  }

  isChar(ch: string): boolean {
    const t = this.peek();
    return t.t === 'char' && t.ch === ch;
  }

  acceptKw(kw: Keyword): boolean {
    if (!this.isKw(kw)) return false;
    this.take();
    return true;
  }

  acceptChar(ch: string): boolean {
    if (!this.isChar(ch)) return false;
    this.take();
    return true;
  }

  expectChar(ch: string): void {
    if (!this.acceptChar(ch)) throw syntaxError();
  }

  /**
   * A name (slot, setting). Keywords are accepted here as plain names, so
   * that `SHOW timeline` or a slot called `wait` still work now that
   * keywords match in any case.
   */
  ident(): string {
    const t = this.take();
    if (t.t === 'kw') return downcaseIdentifier(t.word);
    if (t.t !== 'ident') throw syntaxError();
    return t.value;
  }

  uconst(): number {
    const t = this.take();
    if (t.t !== 'uconst') throw syntaxError();
    return t.value;
  }

  /** A timeline: UCONST, which must not be 0 (checked as soon as it is read, like the grammar action). */
  timeline(): number {
    const tli = this.uconst();
    if (tli <= 0) throw syntaxError(`invalid timeline ${tli}`);
    return tli;
  }

  recptr(): bigint {
    const t = this.take();
    if (t.t !== 'recptr') throw syntaxError();
    const hi = t.hi.replace(/^0+(?=.)/, '');
    const lo = t.lo.replace(/^0+(?=.)/, '');
    if (hi.length > 8 || lo.length > 8) throw syntaxError('invalid streaming start location');
    return (BigInt('0x' + hi) << 32n) | BigInt('0x' + lo);
  }

  /** var_name: IDENT ('.' IDENT)* */
  varName(): string {
    let name = this.ident();
    while (this.acceptChar('.')) name += '.' + this.ident();
    return name;
  }

  /** ident_or_keyword [IDENT | SCONST | UCONST] (, ...)* — generic_option_list. */
  genericOptions(): DefElem[] {
    const out: DefElem[] = [];
    do {
      const t = this.take();
      let name: string;
      if (t.t === 'ident') name = t.value;
      else if (t.t === 'kw' && OPTION_NAME_KEYWORDS.has(t.kw)) name = t.kw.toLowerCase();
      else throw syntaxError();
      const v = this.peek();
      let arg: DefElem['arg'] = null;
      if (v.t === 'ident' || v.t === 'sconst') {
        this.take();
        arg = { str: v.value };
      } else if (v.t === 'uconst') {
        this.take();
        arg = { int: v.value | 0 }; // makeInteger() takes an int
      }
      out.push({ name, arg });
    } while (this.acceptChar(','));
    return out;
  }

  /** create_slot_options: '(' generic_option_list ')' | create_slot_legacy_opt* */
  createSlotOptions(): DefElem[] {
    if (this.acceptChar('(')) {
      const opts = this.genericOptions();
      this.expectChar(')');
      return opts;
    }
    const out: DefElem[] = [];
    for (;;) {
      const t = this.peek();
      if (t.t !== 'kw') return out;
      switch (t.kw) {
        case 'EXPORT_SNAPSHOT':
          out.push({ name: 'snapshot', arg: { str: 'export' } });
          break;
        case 'NOEXPORT_SNAPSHOT':
          out.push({ name: 'snapshot', arg: { str: 'nothing' } });
          break;
        case 'USE_SNAPSHOT':
          out.push({ name: 'snapshot', arg: { str: 'use' } });
          break;
        case 'RESERVE_WAL':
          out.push({ name: 'reserve_wal', arg: { str: 'true' } });
          break;
        case 'TWO_PHASE':
          out.push({ name: 'two_phase', arg: { str: 'true' } });
          break;
        default:
          return out;
      }
      this.take();
    }
  }

  /** plugin_options: '(' IDENT [SCONST] (, IDENT [SCONST])* ')' | empty */
  pluginOptions(): Record<string, string | null> {
    const out: Record<string, string | null> = {};
    if (!this.acceptChar('(')) return out;
    do {
      const name = this.ident();
      const v = this.peek();
      if (v.t === 'sconst') {
        this.take();
        out[name] = v.value;
      } else {
        out[name] = null;
      }
    } while (this.acceptChar(','));
    this.expectChar(')');
    return out;
  }

  /** opt_semicolon, then the end of the input. */
  end(): void {
    this.acceptChar(';');
    if (this.peek().t !== 'eof') throw syntaxError();
  }
}

/** defGetString() */
function optString(o: DefElem): string {
  if (o.arg === null) throw syntaxError(`${o.name} requires a parameter`);
  return 'str' in o.arg ? o.arg.str : String(o.arg.int);
}

/** defGetBoolean() */
function optBoolean(o: DefElem): boolean {
  if (o.arg === null) return true;
  if ('int' in o.arg) {
    if (o.arg.int === 0) return false;
    if (o.arg.int === 1) return true;
  } else {
    const v = o.arg.str.replace(/[A-Z]+/g, (m) => m.toLowerCase()); // pg_strcasecmp: ASCII only
    if (v === 'true' || v === 'on') return true;
    if (v === 'false' || v === 'off') return false;
  }
  throw syntaxError(`${o.name} requires a Boolean value`);
}

/** walsender.c parseCreateReplSlotOptions(): the checks CREATE_REPLICATION_SLOT makes before anything else. */
function checkCreateSlotOptions(opts: DefElem[], logical: boolean): { reserveWal: boolean; options: Record<string, string | boolean | number> } {
  const options: Record<string, string | boolean | number> = {};
  let reserveWal = false;
  const conflicting = (): PgError => syntaxError('conflicting or redundant options');
  for (const o of opts) {
    switch (o.name) {
      case 'snapshot': {
        if ('snapshot' in options || !logical) throw conflicting();
        const action = optString(o);
        if (action !== 'export' && action !== 'nothing' && action !== 'use') {
          throw new PgError(
            SQLSTATE.INVALID_PARAMETER_VALUE,
            `unrecognized value for CREATE_REPLICATION_SLOT option "${o.name}": "${action}"`,
          );
        }
        options.snapshot = action;
        break;
      }
      case 'reserve_wal':
        if ('reserve_wal' in options || logical) throw conflicting();
        reserveWal = optBoolean(o);
        options.reserve_wal = reserveWal;
        break;
      case 'two_phase':
        if ('two_phase' in options || !logical) throw conflicting();
        options.two_phase = optBoolean(o);
        break;
      default:
        throw new PgError(SQLSTATE.INTERNAL_ERROR, `unrecognized option: ${o.name}`);
    }
  }
  return { reserveWal, options };
}

/**
 * Parses one simple-query string sent to a walsender the way PostgreSQL 15
 * does. Returns `{ kind: 'sql' }` when the first token is not a replication
 * command keyword and `{ kind: 'empty' }` for blanks/semicolons only.
 * Throws PgError (42601 for syntax, see the module comment for the others).
 */
export function parseReplicationCommand(text: string): ReplicationCommand {
  const p = new Parser(new Scanner(text));
  const first = p.take();
  if (first.t !== 'kw' || !COMMAND_KEYWORDS.has(first.kw)) {
    if ((first.t === 'eof' || (first.t === 'char' && first.ch === ';')) && /^[ \t\n\r\f\v;]*$/.test(text)) return { kind: 'empty' };
    return { kind: 'sql', text };
  }

  switch (first.kw) {
    case 'IDENTIFY_SYSTEM':
      p.end();
      return { kind: 'identify_system' };

    case 'BASE_BACKUP':
      // We never take base backups; whatever follows is not looked at.
      return { kind: 'base_backup' };

    case 'SHOW': {
      const name = p.varName();
      p.end();
      return { kind: 'show', name };
    }

    case 'READ_REPLICATION_SLOT': {
      const slot = p.varName();
      p.end();
      return { kind: 'read_replication_slot', slot };
    }

    case 'TIMELINE_HISTORY': {
      const tli = p.timeline();
      p.end();
      return { kind: 'timeline_history', tli };
    }

    case 'DROP_REPLICATION_SLOT': {
      const slot = p.ident();
      const wait = p.acceptKw('WAIT');
      p.end();
      return { kind: 'drop_replication_slot', slot, wait };
    }

    case 'CREATE_REPLICATION_SLOT': {
      const slot = p.ident();
      const temporary = p.acceptKw('TEMPORARY');
      let logical: boolean;
      let plugin: string | null = null;
      if (p.acceptKw('PHYSICAL')) {
        logical = false;
      } else if (p.acceptKw('LOGICAL')) {
        logical = true;
        plugin = p.ident();
      } else {
        throw syntaxError();
      }
      const opts = p.createSlotOptions();
      p.end();
      const { reserveWal, options } = checkCreateSlotOptions(opts, logical);
      return { kind: 'create_replication_slot', slot, temporary, logical, plugin, reserveWal, options };
    }

    case 'START_REPLICATION': {
      let slot: string | null = null;
      if (p.acceptKw('SLOT')) {
        slot = p.ident();
        if (p.acceptKw('LOGICAL')) {
          const start = p.recptr();
          const options = p.pluginOptions();
          p.end();
          return { kind: 'start_replication', slot, logical: true, start, tli: null, options };
        }
      }
      p.acceptKw('PHYSICAL');
      const start = p.recptr();
      const tli = p.acceptKw('TIMELINE') ? p.timeline() : null;
      p.end();
      return { kind: 'start_replication', slot, logical: false, start, tli, options: {} };
    }

    default:
      throw syntaxError();
  }
}
