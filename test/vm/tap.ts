/** Reads the TAP that ava writes (`ava --tap`) into one result per test. */

export type TapStatus = 'passed' | 'failed' | 'skipped' | 'todo';

export interface TapResult {
  title: string;
  status: TapStatus;
  /** t.log lines and the failure's YAML block, as ava wrote them. */
  output: string;
}

const LINE = /^(ok|not ok) \d+ - (.*?)(?: # (SKIP|TODO))?$/;

export function parseTap(text: string): TapResult[] {
  const results: TapResult[] = [];
  let current: TapResult | undefined;
  let inYaml = false;
  for (const line of text.split('\n')) {
    const m = inYaml ? null : LINE.exec(line);
    if (m) {
      const status: TapStatus = m[3] === 'SKIP' ? 'skipped' : m[3] === 'TODO' ? 'todo' : m[1] === 'ok' ? 'passed' : 'failed';
      current = { title: m[2]!, status, output: '' };
      results.push(current);
      continue;
    }
    if (!current) continue;
    if (line === '  ---') inYaml = true;
    if (inYaml || line.startsWith('#   ')) current.output += `${line}\n`;
    if (line === '  ...') inYaml = false;
  }
  return results;
}
