/**
 * Test helper (not a test file): fake action kinds for the hook runner, recording every step
 * as an event in one list so that tests assert the order of steps, not their timing.
 *
 * A fake command's behaviour is its first word:
 * - `ok`: exits 0; `fail`: prints "boom" on stderr and exits 3;
 * - `fail-on`: fails like `fail` for volume `command[1]` (the rule's context), exits 0 for any other;
 * - `hang`: runs until killed (exit by SIGKILL);
 * - `unkillable`: runs forever: its kill and stop do nothing;
 * - `gate`: runs until the test opens gate `command[1]` (`gates.open(name)`), then exits 0;
 * - `bg`: prints READY and runs until stopped (SIGTERM) or killed;
 * - `bg-quiet`: like bg without printing READY;
 * - `end-bg`: makes every running bg session exit by itself (exit 0), waits for that, exits 0.
 *
 * Where an action runs (its target, in the events) is `node-1` unless told: a list, or a
 * function of the rule's context (e.g. each volume's engine node, for rules run per member).
 */
import type { ActionSession, ActionTransport, FrozenFs, FsFreezer, OutputChunk, RuleContext, SessionEnd } from '../../src/snapshot/action-transport.js';
import type { RuleAction } from '../../src/snapshot/snapshot-rule.js';

export class Gates {
  private readonly waiting = new Map<string, { promise: Promise<void>; open: () => void }>();
  private entry(name: string): { promise: Promise<void>; open: () => void } {
    let e = this.waiting.get(name);
    if (!e) {
      let open!: () => void;
      const promise = new Promise<void>((resolve) => { open = resolve; });
      e = { promise, open };
      this.waiting.set(name, e);
    }
    return e;
  }
  wait(name: string): Promise<void> {
    return this.entry(name).promise;
  }
  open(name: string): void {
    this.entry(name).open();
  }
}

export class FakeTransport implements ActionTransport {
  readonly events: string[];
  readonly gates = new Gates();
  private readonly running = new Set<(end: SessionEnd) => void>();
  private readonly bgEnders = new Set<() => Promise<SessionEnd>>();

  constructor(events: string[], private readonly targetList: string[] | ((ctx: RuleContext) => string[]) = ['node-1']) {
    this.events = events;
  }

  targets(_action: RuleAction, ctx: RuleContext): Promise<string[]> {
    return Promise.resolve(typeof this.targetList === 'function' ? this.targetList(ctx) : [...this.targetList]);
  }

  start(action: RuleAction, target: string, ctx: RuleContext, onOutput: (chunk: OutputChunk) => void): ActionSession {
    const label = `${action.name ?? action.command.join(' ')}@${target}`;
    this.events.push(`start ${label}`);
    let finish!: (end: SessionEnd) => void;
    const done = new Promise<SessionEnd>((resolve) => {
      finish = (end) => {
        this.running.delete(finish);
        resolve(end);
      };
    });
    void done.then((end) => this.events.push(`end ${label} ${end.exitCode ?? end.signal}`));
    this.running.add(finish);
    const out = (stream: 'stdout' | 'stderr', text: string): void => onOutput({ stream, data: Buffer.from(text) });
    const [word, arg] = action.command;
    queueMicrotask(() => {
      if (word === 'fail' || (word === 'fail-on' && ctx.volume === arg)) {
        out('stderr', 'boom\n');
        finish({ exitCode: 3 });
      } else if (word === 'ok' || word === 'fail-on') finish({ exitCode: 0 });
      else if (word === 'gate') void this.gates.wait(arg!).then(() => finish({ exitCode: 0 }));
      else if (word === 'bg' || word === 'bg-quiet') {
        if (word === 'bg') out('stdout', 'starting\nREADY\n');
        const ender = (): Promise<SessionEnd> => {
          finish({ exitCode: 0 });
          return done;
        };
        this.bgEnders.add(ender);
        void done.then(() => this.bgEnders.delete(ender));
      } else if (word === 'end-bg') void Promise.all([...this.bgEnders].map((e) => e())).then(() => finish({ exitCode: 0 }));
    });
    if (word === 'unkillable') return { done, kill: () => undefined, stop: () => done.then(() => undefined) };
    return {
      done,
      kill: () => finish({ exitCode: null, signal: 'SIGKILL' }),
      stop: async () => {
        this.events.push(`stop ${label}`);
        finish({ exitCode: null, signal: 'SIGTERM' });
        await done;
      },
    };
  }
}

export class FakeFreezer implements FsFreezer {
  frozen = false;
  /** Set to make the next freeze wait for this gate. */
  gate: Promise<void> | undefined;
  private thawedResolve!: () => void;
  /** Resolves when a thaw has happened. */
  readonly thawed = new Promise<void>((resolve) => { this.thawedResolve = resolve; });

  /** With `byVolume`, the events name the volume ("freeze db", "thaw db"): several volumes share one freezer. */
  constructor(private readonly events: string[], private readonly byVolume = false) {}

  async freeze(ctx: RuleContext): Promise<FrozenFs> {
    if (this.gate) await this.gate;
    const of = this.byVolume ? ` ${ctx.volume}` : '';
    this.events.push(`freeze${of}`);
    this.frozen = true;
    return {
      target: `/staging/${ctx.volume}`,
      thaw: async () => {
        this.events.push(`thaw${of}`);
        this.frozen = false;
        this.thawedResolve();
      },
    };
  }
}
