/**
 * The policy in force, editable: validated as you type (POST
 * /admin/v1/policy/validate, debounced), applied with PUT /admin/v1/policy.
 * Reloaded from the gateway when the policy in force changes, unless the
 * text has unsaved edits.
 */
import { call } from './api.js';
import { $ } from './dom.js';

const DEBOUNCE_MS = 300;

export class PolicyEditor {
  private loadedAt = '';
  private fetching = false;
  private serverText = '';
  private timer: number | undefined;
  private checkSeq = 0;
  private readonly text = $('policy-text') as HTMLTextAreaElement;
  private readonly check = $('policy-check');

  constructor() {
    this.text.addEventListener('input', () => {
      clearTimeout(this.timer);
      this.timer = window.setTimeout(() => void this.validate().catch((err: Error) => this.show('error', `cannot check: ${err.message}`)), DEBOUNCE_MS);
    });
    $('policy-revert').addEventListener('click', () => {
      this.text.value = this.serverText;
      void this.validate().catch((err: Error) => this.show('error', `cannot check: ${err.message}`));
    });
    $('policy-apply').addEventListener('click', () => void this.apply());
  }

  private get dirty(): boolean {
    return this.text.value !== this.serverText;
  }

  /** Called with every snapshot's policy summary: fetches the policy when it changed. */
  async follow(summary: { loadedAt: string }): Promise<void> {
    if (summary.loadedAt === this.loadedAt || this.fetching) return;
    this.fetching = true;
    let r: Awaited<ReturnType<typeof call>>;
    try {
      r = await call('GET', '/policy');
    } finally {
      this.fetching = false;
    }
    if (r.status !== 200) return;
    this.loadedAt = summary.loadedAt;
    const p = r.data as { source: string; loadedAt: string; lastError: string; text: string; effective: unknown; reloads: { ok: number; refused: number } };
    const wasDirty = this.dirty;
    this.serverText = p.text;
    if (!wasDirty) this.text.value = p.text;
    $('policy-meta').textContent = `from ${p.source}, since ${new Date(p.loadedAt).toLocaleString()} · reloads ${p.reloads.ok} applied, ${p.reloads.refused} refused` +
      (p.lastError ? ` · last reload refused: ${p.lastError}` : '') + (p.text ? '' : ' · built-in defaults (empty text)');
    $('policy-effective').textContent = `effective: ${JSON.stringify(p.effective, null, 1)}`;
  }

  private show(state: 'ok' | 'error' | 'busy', text: string): void {
    this.check.dataset.state = state;
    this.check.textContent = text;
  }

  async validate(): Promise<boolean> {
    const seq = ++this.checkSeq;
    this.show('busy', 'checking…');
    const r = await call('POST', '/policy/validate', this.text.value);
    if (seq !== this.checkSeq) return false; // a newer edit is being checked
    if (r.status === 200) {
      this.show('ok', this.dirty ? 'valid (not applied yet)' : 'valid (in force)');
      return true;
    }
    this.show('error', `invalid: ${(r.data.errors ?? [r.data.error]).join('; ')}`);
    return false;
  }

  private async apply(): Promise<void> {
    const btn = $('policy-apply') as HTMLButtonElement;
    btn.disabled = true;
    try {
      const r = await call('PUT', '/policy', this.text.value);
      if (r.status === 200) {
        this.serverText = this.text.value;
        this.show('ok', 'applied: in force and pushed to every launcher');
      } else this.show('error', `not applied (HTTP ${r.status}): ${(r.data.errors ?? [r.data.error]).join('; ')}`);
    } catch (err) {
      this.show('error', `not applied: ${(err as Error).message}`);
    } finally {
      btn.disabled = false;
    }
  }
}
