// Resources acquired in order and released in reverse, whether a start fails
// half way or a running device is destroyed (g_union's fail1..fail4 labels
// as one stack).

type Undo = (how: { force: boolean }) => unknown

export class Teardown {
  readonly #steps: { what: string; undo: Undo }[] = []
  readonly #log: (message: string) => void

  constructor(log: (message: string) => void) {
    this.#log = log
  }

  add(what: string, undo: Undo): void {
    this.#steps.push({ what, undo })
  }

  /**
   * Runs every step, last added first. A step that fails is logged and the
   * rest still run; the first failure is rethrown at the end.
   */
  async run(how: { force: boolean }): Promise<void> {
    let first: unknown
    for (let step = this.#steps.pop(); step; step = this.#steps.pop()) {
      try {
        await step.undo(how)
      } catch (e) {
        this.#log(`releasing ${step.what} failed: ${(e as Error).message}`)
        first ??= e
      }
    }
    if (first !== undefined) throw first
  }
}
