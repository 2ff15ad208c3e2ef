// The text of an answer generated a few tokens at a time: what may go to the client now, and where a
// stop string ends it. Plain logic over a detokenizer, so streaming and stop strings are tested
// without a model.
//
// Two things are held back: the tokens of a character not yet complete (a byte-level vocabulary
// splits one UTF-8 character over several tokens, and the first alone decodes to U+FFFD), and text
// that may be the start of a stop string, so a client never receives part of a stop string.

/** Text for `tokens`, decoded as following `before` (a tokenizer may write a token differently after others). */
export type Detokenize = (tokens: readonly number[], before: readonly number[]) => string;

/** How many pieces of one character a vocabulary may split it into: a UTF-8 character is at most 4 bytes. */
const MAX_PIECES_PER_CHARACTER = 4;
/** Tokens before the new ones given to the detokenizer for context. */
const CONTEXT_TOKENS = 8;

export class GeneratedText {
  private readonly tokens: number[] = [];
  private decoded = 0;
  private text = "";
  private sent = 0;
  private stoppedAt: number | undefined;

  constructor(private readonly detokenize: Detokenize, private readonly stops: readonly string[]) {
    if (stops.some((s) => s.length === 0)) throw new RangeError("a stop string is never empty");
  }

  /** Whether a stop string was generated (the text ends before it). */
  get stopped(): boolean {
    return this.stoppedAt !== undefined;
  }

  /** The answer so far, held-back text included, without any stop string or what followed it. */
  get response(): string {
    return this.text;
  }

  /** Takes the next tokens; returns the text that may be sent now (possibly ""). */
  push(tokens: readonly number[]): string {
    if (this.stopped || tokens.length === 0) return "";
    this.tokens.push(...tokens);
    const from = this.sent;
    if (!this.decodeRest(false)) return "";
    return this.take(this.stopped ? this.text.length : this.text.length - this.stopPrefixAtEnd(from));
  }

  /** The end of the answer: whatever was held back goes out (it was no stop string after all). */
  finish(): string {
    if (!this.stopped) this.decodeRest(true);
    return this.take(this.text.length);
  }

  /**
   * Adds the text of the tokens not decoded yet, cut at the first stop string; false (nothing
   * added) while they end in part of a character and `whole` is not asked.
   */
  private decodeRest(whole: boolean): boolean {
    const pending = this.tokens.slice(this.decoded);
    if (pending.length === 0) return true;
    const piece = this.detokenize(pending, this.tokens.slice(Math.max(0, this.decoded - CONTEXT_TOKENS), this.decoded));
    if (!whole && piece.endsWith("\uFFFD") && pending.length < MAX_PIECES_PER_CHARACTER) return false;
    this.decoded = this.tokens.length;
    const from = this.sent;
    this.text += piece;
    const at = this.firstStop(from);
    if (at !== undefined) {
      this.stoppedAt = at;
      this.text = this.text.slice(0, at);
    }
    return true;
  }

  private take(upTo: number): string {
    if (upTo <= this.sent) return "";
    const out = this.text.slice(this.sent, upTo);
    this.sent = upTo;
    return out;
  }

  /** Where the earliest stop string starts at or after `from` (none starts in text already sent). */
  private firstStop(from: number): number | undefined {
    let first: number | undefined;
    for (const stop of this.stops) {
      const at = this.text.indexOf(stop, from);
      if (at >= 0 && (first === undefined || at < first)) first = at;
    }
    return first;
  }

  /** The length of the longest end of the unsent text that a stop string starts with. */
  private stopPrefixAtEnd(from: number): number {
    let longest = 0;
    for (const stop of this.stops) {
      for (let n = Math.min(stop.length - 1, this.text.length - from); n > longest; n--) {
        if (this.text.endsWith(stop.slice(0, n))) { longest = n; break; }
      }
    }
    return longest;
  }
}
