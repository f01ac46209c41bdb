/** Stop strings on streamed text: emits what is safe, holds back a possible prefix of a stop string. */

/** A matcher for up to 4 stop strings (OpenAI's limit). */
export class StopStringMatcher {
  #pending = "";
  #stopped = false;
  constructor(readonly stops: readonly string[]) {}

  get stopped(): boolean {
    return this.#stopped;
  }

  /** Feeds text; returns the text that can be shown now. After a stop string, returns "" forever. */
  push(text: string): string {
    if (this.#stopped) return "";
    if (this.stops.length === 0) return text;
    this.#pending += text;
    let cut = -1;
    for (const stop of this.stops) {
      const at = this.#pending.indexOf(stop);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.#stopped = true;
      const out = this.#pending.slice(0, cut);
      this.#pending = "";
      return out;
    }
    // Hold back the longest tail that could still grow into a stop string.
    let hold = 0;
    for (const stop of this.stops) {
      for (let k = Math.min(stop.length - 1, this.#pending.length); k > hold; k--) {
        if (this.#pending.endsWith(stop.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    const out = this.#pending.slice(0, this.#pending.length - hold);
    this.#pending = this.#pending.slice(this.#pending.length - hold);
    return out;
  }

  /** Text held back at the end of generation (no stop string came). */
  flush(): string {
    const out = this.#stopped ? "" : this.#pending;
    this.#pending = "";
    return out;
  }
}
