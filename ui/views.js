// dicom-gw console: the screens. Each view renders into `main` and may return a cleanup
// function (timers). Controls a role may not use are not rendered at all; the API refuses
// them anyway.

import { api, attempt, can, flash, h, session } from './app.js?v=__V__';

const REFRESH_MS = 10000;

// ---- formatting ----

const fmtInt = (n) => (n ?? 0).toLocaleString('en-US');
const fmtBytes = (b) => {
  if (b == null) return '–';
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (b >= 1000 && i < u.length - 1) { b /= 1000; i++; }
  return `${b.toFixed(i ? 1 : 0)} ${u[i]}`;
};
const fmtTime = (us) => (us ? new Date(us / 1000).toLocaleString() : '–');
const fmtDate = (d) => (d && d.length === 8 ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : d || '');
const dicomDate = (isoDate) => (isoDate || '').replaceAll('-', '');
const fmtDuration = (s) => {
  const d = Math.floor(s / 86400), hh = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d} d ${hh} h` : hh ? `${hh} h ${m} min` : `${m} min ${s % 60} s`;
};

function table(head, rows, opts = {}) {
  return h('table', { id: opts.id },
    h('thead', {}, h('tr', {}, head.map((c) => h('th', { class: /^#|count|pending|retry|in flight|dead|done|size|instances|series|active|attempts/i.test(c) ? 'num' : '' }, c)))),
    h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: head.length, class: 'muted' }, opts.empty || 'Nothing to show.'))));
}

/** The children that are not null or false (replaceChildren would print "null"). */
const kids = (...c) => c.flat().filter((x) => x !== null && x !== undefined && x !== false);
const td = (v, cls) => h('td', { class: cls }, v);
const num = (v) => h('td', { class: 'num' }, fmtInt(v));

/** A pager for list answers ({items,total,offset,limit}). */
function pager(page, go) {
  const { total, offset, limit } = page;
  const last = offset + page.items.length;
  return h('div', { class: 'pager' },
    h('button', { type: 'button', class: 'secondary', disabled: offset <= 0, onclick: () => go(Math.max(0, offset - limit)) }, '‹ Previous'),
    h('span', { class: 'muted' }, total ? `${offset + 1}–${last} of ${fmtInt(total)}` : 'none'),
    h('button', { type: 'button', class: 'secondary', disabled: last >= total, onclick: () => go(offset + limit) }, 'Next ›'));
}

function field(label, name, attrs = {}) {
  const input = h(attrs.tag || 'input', { name, id: 'f-' + name, ...attrs, tag: null });
  return [h('label', { for: 'f-' + name }, label, input), input];
}

function select(name, options, value) {
  return h('select', { name, id: 'f-' + name }, options.map((o) => h('option', { value: o, selected: o === value }, o)));
}

function poll(fn) {
  let timer = null;
  const tick = async () => {
    if (!document.hidden) await fn();
    timer = setTimeout(tick, REFRESH_MS);
  };
  tick();
  return () => clearTimeout(timer);
}

// ---- chart: a line chart on a canvas (no library) ----

function drawChart(canvas, points, { label, unit, color }) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600, hgt = canvas.clientHeight || 180;
  canvas.width = w * dpr; canvas.height = hgt * dpr;
  const c = canvas.getContext('2d');
  c.scale(dpr, dpr);
  const css = getComputedStyle(document.documentElement);
  const fg = css.getPropertyValue('--muted').trim(), line = css.getPropertyValue('--line').trim();
  const stroke = css.getPropertyValue(color).trim();
  c.clearRect(0, 0, w, hgt);
  const padL = 56, padB = 22, padT = 10, padR = 8;
  const now = Date.now() * 1000, span = 3600e6;
  const max = Math.max(1e-9, ...points.map((p) => p.v));
  const nice = niceMax(max);
  c.font = '11px system-ui, sans-serif';
  c.fillStyle = fg; c.strokeStyle = line; c.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = padT + (hgt - padT - padB) * (1 - i / 4);
    c.beginPath(); c.moveTo(padL, y); c.lineTo(w - padR, y); c.stroke();
    c.fillText(fmtAxis(nice * i / 4), 4, y + 4);
  }
  for (let m = 60; m >= 0; m -= 15) {
    const x = padL + (w - padL - padR) * (1 - m / 60);
    c.fillText(m ? `-${m} min` : 'now', Math.min(x - 14, w - 30), hgt - 6);
  }
  c.strokeStyle = stroke; c.lineWidth = 2; c.beginPath();
  let started = false;
  for (const p of points) {
    const x = padL + (w - padL - padR) * (1 - (now - p.t) / span);
    const y = padT + (hgt - padT - padB) * (1 - p.v / nice);
    if (x < padL) continue;
    if (started) c.lineTo(x, y); else { c.moveTo(x, y); started = true; }
  }
  c.stroke();
  // The newest point as a dot, so a single sample (a fresh daemon) is visible too.
  const lastPt = points[points.length - 1];
  if (lastPt) {
    c.fillStyle = stroke;
    c.beginPath();
    c.arc(padL + (w - padL - padR) * (1 - (now - lastPt.t) / span), padT + (hgt - padT - padB) * (1 - lastPt.v / nice), 3, 0, 2 * Math.PI);
    c.fill();
  }
  canvas.setAttribute('aria-label', `${label} over the last hour; latest ${points.length ? fmtAxis(points[points.length - 1].v) : 0} ${unit}`);
}
const niceMax = (m) => { const e = 10 ** Math.floor(Math.log10(m)); return [1, 2, 5, 10].map((k) => k * e).find((v) => v >= m); };
const fmtAxis = (v) => (v === 0 ? '0' : v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : Number(v.toPrecision(2)).toString());

// ---- Prometheus text (for per-service and per-status counters) ----

function promSamples(text, name) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue;
    const m = line.match(/^[a-z_]+(?:\{([^}]*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = Object.fromEntries([...(m[1] || '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    out.push({ labels, value: Number(m[2]) });
  }
  return out;
}

// ---- dashboard ----

async function dashboard(main) {
  const el = (id, cls) => h('div', { id, class: cls || '' }, '…');
  const instances = el('stat-instances', 'big'), bytes = el('stat-bytes', 'big');
  const ready = el('readiness'), assoc = el('associations'), cstore = el('cstore'), disk = el('disk');
  const sys = el('system'), queue = el('queue-summary');
  const c1 = h('canvas', { class: 'chart', id: 'chart-instances', role: 'img' });
  const c2 = h('canvas', { class: 'chart', id: 'chart-bytes', role: 'img' });
  main.append(h('h1', {}, 'Dashboard'),
    h('div', { class: 'grid' },
      h('section', { class: 'card' }, h('h2', {}, 'Instances received'), instances, h('div', { class: 'muted' }, 'since start')),
      h('section', { class: 'card' }, h('h2', {}, 'Data received'), bytes, h('div', { class: 'muted' }, 'dataset bytes since start')),
      h('section', { class: 'card' }, h('h2', {}, 'Readiness'), ready),
      h('section', { class: 'card' }, h('h2', {}, 'Disk'), disk),
      h('section', { class: 'card wide' }, h('h2', {}, 'Ingest rate, instances/s (last hour)'), c1),
      h('section', { class: 'card wide' }, h('h2', {}, 'Ingest rate, MB/s (last hour)'), c2),
      h('section', { class: 'card' }, h('h2', {}, 'Active associations'), assoc),
      h('section', { class: 'card' }, h('h2', {}, 'C-STORE results'), cstore),
      h('section', { class: 'card' }, h('h2', {}, 'System'), sys),
      h('section', { class: 'card wide' }, h('h2', {}, 'Forwarding queue'), queue)));
  let history = null;
  const redraw = () => {
    if (!history) return;
    const pts = history.samples.filter((s) => s.instances_per_second != null);
    // The rate since the last sample, from the answer's own sample (when 2 s or more apart).
    const last = history.samples[history.samples.length - 1], now = history.now;
    if (last && now && now.t_us - last.t_us >= 2e6) {
      const dt = (now.t_us - last.t_us) / 1e6;
      pts.push({ t_us: now.t_us, instances_per_second: (now.instances - last.instances) / dt, bytes_per_second: (now.bytes - last.bytes) / dt });
    }
    drawChart(c1, pts.map((s) => ({ t: s.t_us, v: s.instances_per_second })), { label: 'instances per second', unit: 'instances/s', color: '--chart1' });
    drawChart(c2, pts.map((s) => ({ t: s.t_us, v: s.bytes_per_second / 1e6 })), { label: 'megabytes per second', unit: 'MB/s', color: '--chart2' });
  };
  const refresh = () => attempt('dashboard', async () => {
    const [stats, hist, q, rz, metrics] = await Promise.all([
      api('GET', 'stats'), api('GET', 'stats/history'), api('GET', 'queue?limit=1000'),
      api('GET', '/readyz', undefined, { acceptStatus: [503] }),
      api('GET', '/metrics', undefined, { raw: true }).then((r) => r.text()),
    ]);
    history = hist;
    instances.textContent = fmtInt(stats.since_start.instances_received);
    bytes.textContent = fmtBytes(stats.since_start.dataset_bytes_received);
    const failing = Object.entries(rz.checks).filter(([, c]) => !c.ok);
    ready.replaceChildren(h('span', { class: 'pill ' + (rz.ready ? 'ok' : 'bad'), id: 'ready-state' }, rz.ready ? 'ready' : 'not ready'),
      failing.length ? h('ul', {}, failing.map(([k, c]) => h('li', { class: 'bad' }, `${k}: ${c.message}`))) : h('div', { class: 'muted' }, 'all checks pass'));
    const used = stats.disk.used_percent;
    const bar = h('span', { class: stats.disk.accepting ? (used > 85 ? 'warn' : '') : 'bad' });
    bar.style.width = `${Math.min(100, used || 0)}%`;
    const mark = h('i', { title: `high-water mark ${stats.disk.high_water_percent} %` });
    mark.style.left = `${Math.min(100, stats.disk.high_water_percent)}%`;
    disk.replaceChildren(h('div', { id: 'disk-use' }, used == null ? stats.disk.error : `${used} % used of ${stats.disk.high_water_percent} % allowed (high-water mark)`),
      h('div', { class: 'bar', role: 'presentation' }, bar, mark),
      h('div', { class: stats.disk.accepting ? 'muted' : 'bad' }, stats.disk.accepting ? 'below the high-water mark: accepting objects' : 'above the high-water mark: C-STORE answers A700'));
    const act = promSamples(metrics, 'dicomgw_associations_active');
    assoc.replaceChildren(table(['Service', 'Active'], act.map((s) => h('tr', {}, td(s.labels.service), num(s.value)))));
    const cs = promSamples(metrics, 'dicomgw_cstore_total').filter((s) => s.value > 0);
    cstore.replaceChildren(h('div', {}, h('span', { class: 'ok' }, `${fmtInt(stats.since_start.cstore_success)} success`), ' · ',
      h('span', { class: 'warn' }, `${fmtInt(stats.since_start.cstore_warning)} warning`), ' · ',
      h('span', { class: 'bad' }, `${fmtInt(stats.since_start.cstore_failure)} failure`)),
    ...(cs.length ? [table(['Status', 'Count'], cs.map((s) => h('tr', {}, td(s.labels.status, 'mono'), num(s.value))))] : []));
    sys.replaceChildren(h('dl', { class: 'kv' },
      h('dt', {}, 'Version'), h('dd', { id: 'version' }, stats.version),
      h('dt', {}, 'I/O backend'), h('dd', { id: 'io-backend' }, stats.io_backend),
      h('dt', {}, 'Cores'), h('dd', {}, `${stats.cores_listening} of ${stats.cores} accepting`),
      h('dt', {}, 'Uptime'), h('dd', {}, fmtDuration(stats.uptime_seconds)),
      h('dt', {}, 'Studies held'), h('dd', {}, fmtInt(stats.index.studies ?? stats.index.num_studies)),
      h('dt', {}, 'Instances held'), h('dd', {}, fmtInt(stats.index.instances ?? stats.index.num_instances))));
    queue.replaceChildren(table(['Destination', 'State', 'Pending', 'Retry', 'In flight', 'Dead', 'Done'],
      q.items.map((d) => h('tr', {}, td(d.destination), td(d.paused ? h('span', { class: 'pill warn' }, 'paused') : 'running'),
        num(d.pending), num(d.retry), num(d.in_flight), h('td', { class: 'num ' + (d.dead ? 'bad' : '') }, fmtInt(d.dead)), num(d.done))),
      { empty: 'No destinations configured.' }));
    redraw();
  });
  window.addEventListener('resize', redraw);
  const stop = poll(refresh);
  return () => { stop(); window.removeEventListener('resize', redraw); };
}

// ---- studies ----

async function studies(main) {
  const [fName, iName] = field('Patient name (* and ? wildcards)', 'patient_name', { placeholder: 'DOE^*' });
  const [fId, iId] = field('Patient ID', 'patient_id');
  const [fFrom, iFrom] = field('Study date from', 'date_from', { type: 'date' });
  const [fTo, iTo] = field('to', 'date_to', { type: 'date' });
  const [fMod, iMod] = field('Modality', 'modality', { size: 4 });
  const [fAcc, iAcc] = field('Accession number', 'accession_number');
  const results = h('div', { id: 'study-results' });
  const detail = h('div', { id: 'study-detail' });
  const limit = 25;
  const search = (offset = 0) => attempt('search', async () => {
    const q = new URLSearchParams({ offset, limit });
    if (iName.value) q.set('patient_name', iName.value);
    if (iId.value) q.set('patient_id', iId.value);
    if (iMod.value) q.set('modality', iMod.value);
    if (iAcc.value) q.set('accession_number', iAcc.value);
    if (iFrom.value || iTo.value) q.set('study_date', `${dicomDate(iFrom.value)}-${dicomDate(iTo.value)}`);
    const page = await api('GET', 'studies?' + q);
    results.replaceChildren(table(['Patient', 'Patient ID', 'Date', 'Modalities', 'Accession', 'Description', 'Series', 'Instances'],
      page.items.map((s) => {
        const tr = h('tr', { class: 'clickable', tabindex: 0, 'data-study': s.study_instance_uid },
          td(s.patient_name, 'patient-name'), td(s.patient_id), td(fmtDate(s.study_date)), td((s.modalities_in_study || []).join(', ')),
          td(s.accession_number), td(s.study_description), num(s.num_series), num(s.num_instances));
        const open = () => { results.querySelectorAll('tr.selected').forEach((r) => r.classList.remove('selected')); tr.classList.add('selected'); showStudy(s.study_instance_uid, detail); };
        tr.addEventListener('click', open);
        tr.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); open(); } });
        return tr;
      }), { id: 'studies-table', empty: 'No study matches.' }), pager(page, search));
  });
  main.append(h('h1', {}, 'Studies'),
    h('section', { class: 'card' }, h('form', { class: 'inline', id: 'study-search', onsubmit: (e) => { e.preventDefault(); search(0); } },
      fName, fId, fFrom, fTo, fMod, fAcc, h('button', { type: 'submit', id: 'search-submit' }, 'Search'),
      h('button', { type: 'reset', class: 'secondary', onclick: () => setTimeout(() => search(0)) }, 'Clear'))),
    h('section', { class: 'card' }, results), detail);
  await search(0);
}

async function showStudy(uid, box) {
  await attempt('study', async () => {
    const [study, series] = await Promise.all([api('GET', `studies/${encodeURIComponent(uid)}`), api('GET', `studies/${encodeURIComponent(uid)}/series?limit=1000`)]);
    const instancesBox = h('div', {});
    const jobsBox = h('div', { id: 'study-jobs' }, 'Loading…');
    const p = study.patient || {};
    const replay = can('operator') ? replayForm(uid) : null;
    box.replaceChildren(h('section', { class: 'card' }, h('h2', {}, study.study_description ? `Study: ${study.study_description}` : 'Study'),
      h('dl', { class: 'kv' },
        h('dt', {}, 'Patient'), h('dd', {}, `${study.patient_name || ''} (${study.patient_id || ''}) ${p.patient_birth_date ? 'born ' + fmtDate(p.patient_birth_date) : ''} ${p.patient_sex || ''}`),
        h('dt', {}, 'Study date'), h('dd', {}, `${fmtDate(study.study_date)} ${study.study_time || ''}`),
        h('dt', {}, 'Accession'), h('dd', {}, study.accession_number || ''),
        h('dt', {}, 'Referring'), h('dd', {}, study.referring_physician_name || ''),
        h('dt', {}, 'Study UID'), h('dd', { class: 'mono' }, uid)),
      h('h2', {}, 'Series'),
      table(['#', 'Modality', 'Description', 'Instances'], series.items.map((s) => {
        const tr = h('tr', { class: 'clickable', tabindex: 0 }, num(s.series_number), td(s.modality), td(s.series_description), num(s.num_instances));
        const open = () => showInstances(uid, s.series_instance_uid, instancesBox);
        tr.addEventListener('click', open);
        tr.addEventListener('keydown', (e) => { if (e.key === 'Enter') open(); });
        return tr;
      })), instancesBox,
      h('h2', {}, 'Forwarding of this study'), jobsBox, replay));
    // Outstanding jobs (pending, retry, in flight, dead) of this study's instances, per
    // destination; done jobs are counted and deleted by the queue, so they do not show here.
    const sops = new Set();
    for (const s of series.items) {
      const inst = await api('GET', `studies/${encodeURIComponent(uid)}/series/${encodeURIComponent(s.series_instance_uid)}/instances?limit=1000`);
      inst.items.forEach((i) => sops.add(i.sop_instance_uid));
    }
    const jobs = await api('GET', 'queue/jobs?limit=1000');
    const per = {};
    for (const j of jobs.items.filter((j) => sops.has(j.sop_instance_uid))) {
      per[j.destination] ??= { pending: 0, retry: 0, 'in-flight': 0, dead: 0 };
      per[j.destination][j.state] = (per[j.destination][j.state] || 0) + 1;
    }
    jobsBox.replaceChildren(table(['Destination', 'Pending', 'Retry', 'In flight', 'Dead'],
      Object.entries(per).map(([d, c]) => h('tr', {}, td(d), num(c.pending), num(c.retry), num(c['in-flight']), num(c.dead))),
      { empty: 'No outstanding job: every destination routed to has this study (or none was routed).' }));
  });
}

function replayForm(uid) {
  const dest = h('select', { name: 'destination', id: 'replay-destination', 'aria-label': 'Destination to replay to' });
  api('GET', 'destinations?limit=1000').then((d) => dest.replaceChildren(...d.items.map((x) => h('option', { value: x.name }, x.name)))).catch(() => {});
  return h('form', { class: 'inline', id: 'replay-form', onsubmit: (e) => { e.preventDefault(); attempt('replay', async () => {
    const r = await api('POST', 'queue/replay', { destination: dest.value, study: uid });
    flash(`Replay queued: ${r.queued ?? JSON.stringify(r)} instance(s) for ${dest.value}.`);
  }); } }, h('label', { for: 'replay-destination' }, 'Send the study again to', dest), h('button', { type: 'submit', id: 'replay-submit' }, 'Replay'));
}

async function showInstances(study, series, box) {
  await attempt('instances', async () => {
    const page = await api('GET', `studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}/instances?limit=1000`);
    const detail = h('div', { id: 'instance-detail' });
    box.replaceChildren(h('h2', {}, 'Instances'), table(['#', 'SOP Instance UID', 'Transfer syntax', 'Size', 'Received', 'From', ''],
      page.items.map((i) => h('tr', {}, num(i.instance_number), td(i.sop_instance_uid, 'mono'), td(i.transfer_syntax_uid, 'mono'),
        h('td', { class: 'num' }, fmtBytes(i.file_size)), td(fmtTime(i.received_at_us)), td(i.calling_ae_title),
        h('td', { class: 'row' },
          h('button', { type: 'button', class: 'secondary', onclick: () => showInstance(i.sop_instance_uid, detail) }, 'Details'),
          h('button', { type: 'button', class: 'secondary', onclick: () => download(i.sop_instance_uid) }, 'Download'))))), detail);
  });
}

/** Every attribute the index keeps for one instance. */
async function showInstance(sop, box) {
  await attempt('instance', async () => {
    const i = await api('GET', `instances/${encodeURIComponent(sop)}`);
    box.replaceChildren(h('h2', {}, 'Instance'), h('dl', { class: 'kv' }, Object.entries(i).flatMap(([k, v]) => [
      h('dt', {}, k), h('dd', { class: 'mono' }, k.endsWith('_us') && v ? `${fmtTime(v)} (${v})` : typeof v === 'object' ? JSON.stringify(v) : String(v ?? '')),
    ])));
  });
}

async function download(sop) {
  await attempt('download', async () => {
    const r = await api('GET', `instances/${encodeURIComponent(sop)}/file`, undefined, { raw: true });
    const url = URL.createObjectURL(await r.blob());
    const a = h('a', { href: url, download: `${sop}.dcm` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  });
}

// ---- forwarding ----

const DEST_FIELDS = [['name', 'Name'], ['ae_title', 'AE title'], ['host', 'Host'], ['port', 'Port'], ['calling_ae_title', 'Calling AE'], ['max_associations', 'Max associations'], ['max_attempts', 'Max attempts'], ['retry_initial_seconds', 'First retry (s)']];
const NUMERIC = new Set(['port', 'max_associations', 'max_attempts', 'retry_initial_seconds']);

function destForm(existing, done) {
  const inputs = {};
  const fields = DEST_FIELDS.map(([k, label]) => {
    const i = h('input', { name: k, id: `dest-${k}`, value: existing?.[k] ?? '', required: ['name', 'ae_title', 'host', 'port'].includes(k),
      readonly: existing && k === 'name', type: NUMERIC.has(k) ? 'number' : 'text', size: NUMERIC.has(k) ? 6 : 14, min: NUMERIC.has(k) ? 0 : null, step: k === 'retry_initial_seconds' ? 'any' : null });
    inputs[k] = i;
    return h('label', { for: `dest-${k}` }, label, i);
  });
  return h('form', { class: 'inline', id: 'dest-form', onsubmit: (e) => { e.preventDefault(); attempt('destination', async () => {
    const body = {};
    for (const [k, i] of Object.entries(inputs)) if (i.value !== '') body[k] = NUMERIC.has(k) ? Number(i.value) : i.value;
    if (existing) {
      for (const k of Object.keys(existing)) if (!(k in body) && !['paused', 'queue', 'associations_opened'].includes(k)) body[k] = existing[k];
      await api('PUT', `destinations/${encodeURIComponent(existing.name)}`, body);
    } else {
      await api('POST', 'destinations', body);
      e.target.reset();
    }
    flash(`Destination ${body.name} saved.`);
    done();
  }); } }, fields, h('button', { type: 'submit', id: 'dest-save' }, existing ? 'Save' : 'Create'),
  existing ? h('button', { type: 'button', class: 'secondary', onclick: done }, 'Cancel') : null);
}

async function forwarding(main) {
  const dests = h('div', { id: 'destinations' }), formBox = h('div', {}), jobsBox = h('div', { id: 'jobs' });
  const routesBox = h('div', { id: 'routes' });
  const destSel = h('select', { name: 'destination', id: 'jobs-destination' });
  const stateSel = select('state', ['dead', 'pending', 'retry', 'in-flight', 'all'], 'dead');
  stateSel.id = 'jobs-state';
  let names = [];
  const loadDests = () => attempt('destinations', async () => {
    const [d, q] = await Promise.all([api('GET', 'destinations?limit=1000'), api('GET', 'queue?limit=1000')]);
    names = d.items.map((x) => x.name);
    const counts = Object.fromEntries(q.items.map((x) => [x.destination, x]));
    const ops = can('operator');
    dests.replaceChildren(table(['Name', 'AE title', 'Address', 'State', 'Pending', 'Retry', 'In flight', 'Dead', 'Done', ...(ops ? ['Echo', ''] : [])],
      d.items.map((x) => {
        const c = counts[x.name] || x.queue || {};
        const echoOut = h('span', { class: 'echo-result', 'data-echo-result': x.name });
        const actions = [];
        if (can('operator')) {
          actions.push(h('button', { type: 'button', class: 'secondary', 'data-echo': x.name, onclick: () => attempt('echo', async () => {
            echoOut.textContent = '…';
            const r = await api('POST', `destinations/${encodeURIComponent(x.name)}/echo`);
            echoOut.className = 'echo-result ' + (r.ok ? 'ok' : 'bad');
            echoOut.textContent = r.ok ? `success (${r.elapsed_ms} ms)` : `failed: ${r.error}`;
          }) }, 'Echo'));
          actions.push(h('button', { type: 'button', class: 'secondary', 'data-pause': x.name, onclick: () => attempt('pause', async () => {
            await api('POST', `destinations/${encodeURIComponent(x.name)}/${x.paused ? 'resume' : 'pause'}`); loadDests();
          }) }, x.paused ? 'Resume' : 'Pause'));
          if (c.dead) actions.push(h('button', { type: 'button', 'data-retry-all': x.name, onclick: () => attempt('retry', async () => {
            const r = await api('POST', 'queue/retry', { destination: x.name }); flash(`${r.retried ?? 0} dead letter(s) of ${x.name} back in the queue.`); loadDests(); loadJobs();
          }) }, `Retry ${c.dead} dead`));
        }
        if (can('admin')) {
          actions.push(h('button', { type: 'button', class: 'secondary', 'data-edit': x.name, onclick: () => formBox.replaceChildren(h('h2', {}, `Edit ${x.name}`), destForm(x, () => { formBox.replaceChildren(createBox()); loadDests(); })) }, 'Edit'));
          actions.push(h('button', { type: 'button', class: 'danger', 'data-delete': x.name, onclick: () => { if (confirm(`Delete destination ${x.name}?`)) attempt('delete', async () => { await api('DELETE', `destinations/${encodeURIComponent(x.name)}`); loadDests(); }); } }, 'Delete'));
        }
        return h('tr', { 'data-destination': x.name }, td(x.name), td(x.ae_title), td(`${x.host}:${x.port}`, 'mono'),
          td(x.paused ? h('span', { class: 'pill warn' }, 'paused') : 'running'), num(c.pending), num(c.retry), num(c.in_flight),
          h('td', { class: 'num ' + (c.dead ? 'bad' : '') }, fmtInt(c.dead)), num(c.done), ops ? h('td', {}, echoOut) : null, ops ? h('td', { class: 'row' }, actions) : null);
      }), { empty: 'No destinations.' }));
    const cur = destSel.value;
    destSel.replaceChildren(h('option', { value: '' }, 'all destinations'), ...names.map((n) => h('option', { value: n, selected: n === cur }, n)));
  });
  const loadJobs = (offset = 0) => attempt('jobs', async () => {
    const q = new URLSearchParams({ offset, limit: 50 });
    if (destSel.value) q.set('destination', destSel.value);
    if (stateSel.value !== 'all') q.set('state', stateSel.value);
    const page = await api('GET', 'queue/jobs?' + q);
    jobsBox.replaceChildren(table(['Job', 'Destination', 'State', 'SOP Instance UID', 'Attempts', 'Due', 'Reason', ...(can('operator') ? [''] : [])],
      page.items.map((j) => h('tr', { 'data-job': j.id }, num(j.id), td(j.destination), td(j.state), td(j.sop_instance_uid, 'mono'), num(j.attempts),
        td(fmtTime(j.due_at_us)), td(j.last_error || '', 'reason'),
        !can('operator') ? null : h('td', {}, j.state === 'dead' ? h('button', { type: 'button', 'data-retry-job': j.id, onclick: () => attempt('retry', async () => {
          await api('POST', 'queue/retry', { destination: j.destination, job: j.id }); flash(`Job ${j.id} back in the queue.`); loadJobs(); loadDests();
        }) }, 'Retry') : null))), { empty: 'No job in this state.' }), pager(page, loadJobs));
  });
  const loadRoutes = () => attempt('routes', async () => {
    const r = await api('GET', 'routes?limit=1000');
    const text = h('textarea', { id: 'routes-json', 'aria-label': 'Routes (JSON)', readonly: !can('admin') }, JSON.stringify(r.items, null, 2));
    routesBox.replaceChildren(...kids(table(['Name', 'Match', 'Destinations'], r.items.map((x) => h('tr', {}, td(x.name), td(JSON.stringify(x.match || {}), 'mono'), td((x.destinations || []).join(', ')))), { empty: 'No routes: nothing is forwarded.' }),
      can('admin') ? h('details', {}, h('summary', {}, 'Edit the routing table (JSON, as the config file\'s [[routes]])'), text,
        h('button', { type: 'button', id: 'routes-save', onclick: () => attempt('routes', async () => {
          await api('PUT', 'routes', JSON.parse(text.value)); flash('Routes saved.'); loadRoutes();
        }) }, 'Save routes')) : null));
  });
  const createBox = () => (can('admin') ? h('details', { id: 'dest-create' }, h('summary', {}, 'Add a destination'), destForm(null, () => { loadDests(); })) : h('span'));
  destSel.addEventListener('change', () => loadJobs());
  stateSel.addEventListener('change', () => loadJobs());
  formBox.append(createBox());
  main.append(h('h1', {}, 'Forwarding'),
    h('section', { class: 'card' }, h('h2', {}, 'Destinations'), dests, formBox),
    h('section', { class: 'card' }, h('h2', {}, 'Jobs and dead letters'),
      h('div', { class: 'row' }, h('label', { for: 'jobs-destination' }, 'Destination', destSel), h('label', { for: 'f-state' }, 'State', stateSel),
        h('button', { type: 'button', class: 'secondary', id: 'jobs-refresh', onclick: () => { loadDests(); loadJobs(); } }, 'Refresh')), jobsBox),
    h('section', { class: 'card' }, h('h2', {}, 'Routes'), routesBox));
  await loadDests();
  await Promise.all([loadJobs(), loadRoutes()]);
}

// ---- worklist ----

const T = { PatientName: '00100010', PatientID: '00100020', AccessionNumber: '00080050', RequestedProcedureID: '00401001',
  RequestedProcedureDescription: '00321060', SPS: '00400100', Modality: '00080060', StationAE: '00400001', StartDate: '00400002', StartTime: '00400003' };
const val = (ds, tag) => { const v = ds?.[tag]?.Value?.[0]; return v && typeof v === 'object' ? v.Alphabetic ?? '' : v ?? ''; };

async function worklist(main) {
  const list = h('div', { id: 'worklist-items' }), mpps = h('div', { id: 'mpps' }), editBox = h('div', {});
  const load = (offset = 0) => attempt('worklist', async () => {
    const page = await api('GET', `worklist?offset=${offset}&limit=50`);
    list.replaceChildren(table(['Patient', 'Patient ID', 'Accession', 'Modality', 'Station', 'Scheduled', 'Status', ''],
      page.items.map((it) => {
        const sps = it.dataset?.[T.SPS]?.Value?.[0] || {};
        const acts = can('operator') && !['COMPLETED', 'DISCONTINUED', 'CANCELED', 'CANCELLED'].includes(it.status) ? [
          h('button', { type: 'button', class: 'secondary', onclick: () => edit(it) }, 'Edit'),
          h('button', { type: 'button', class: 'danger', 'data-cancel': it.id, onclick: () => attempt('cancel', async () => { await api('POST', `worklist/${it.id}/cancel`); load(); }) }, 'Cancel')] : [];
        return h('tr', { 'data-wl': it.id }, td(val(it.dataset, T.PatientName)), td(val(it.dataset, T.PatientID)), td(val(it.dataset, T.AccessionNumber)),
          td(val(sps, T.Modality)), td(val(sps, T.StationAE)), td(`${fmtDate(val(sps, T.StartDate))} ${val(sps, T.StartTime)}`), td(it.status, 'wl-status'), h('td', { class: 'row' }, acts));
      }), { empty: 'No scheduled items.' }), pager(page, load));
  });
  const edit = (it) => {
    const text = h('textarea', { 'aria-label': 'Item (DICOM JSON)' }, JSON.stringify(it.dataset, null, 2));
    editBox.replaceChildren(h('section', { class: 'card' }, h('h2', {}, `Edit item ${it.id} (DICOM JSON)`), text,
      h('div', { class: 'row' }, h('button', { type: 'button', onclick: () => attempt('save', async () => { await api('PUT', `worklist/${it.id}`, JSON.parse(text.value)); editBox.replaceChildren(); load(); }) }, 'Save'),
        h('button', { type: 'button', class: 'secondary', onclick: () => editBox.replaceChildren() }, 'Close'))));
    text.focus();
  };
  const loadMpps = () => attempt('mpps', async () => {
    const page = await api('GET', 'mpps?limit=100');
    mpps.replaceChildren(table(['SOP Instance UID', 'Status', 'Started', 'Updated', 'Linked items'],
      page.items.map((m) => h('tr', {}, td(m.sop_instance_uid, 'mono'), td(m.status), td(fmtTime(m.created_at_us)), td(fmtTime(m.updated_at_us)), td((m.linked_items || []).join(', ')))),
      { empty: 'No MPPS received.' }));
  });
  let create = null;
  if (can('operator')) {
    const f = {};
    const mk = (k, label, attrs = {}) => { const [l, i] = field(label, k, attrs); f[k] = i; return l; };
    create = h('details', { id: 'wl-create' }, h('summary', {}, 'Schedule an item'), h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); attempt('create', async () => {
      const pn = { vr: 'PN', Value: [{ Alphabetic: f.name.value }] };
      const str = (vr, v) => ({ vr, Value: [v] });
      const ds = { [T.PatientName]: pn, [T.PatientID]: str('LO', f.pid.value), [T.AccessionNumber]: str('SH', f.acc.value),
        [T.RequestedProcedureDescription]: str('LO', f.desc.value || 'Procedure'),
        [T.SPS]: { vr: 'SQ', Value: [{ [T.Modality]: str('CS', f.mod.value), [T.StationAE]: str('AE', f.ae.value), [T.StartDate]: str('DA', dicomDate(f.date.value)), [T.StartTime]: str('TM', (f.time.value || '00:00').replace(':', '') + '00') }] } };
      if (!f.desc.value) delete ds[T.RequestedProcedureDescription];
      await api('POST', 'worklist', ds);
      e.target.reset();
      flash('Item scheduled.');
      load();
    }); } }, mk('name', 'Patient name', { required: true, placeholder: 'DOE^JANE' }), mk('pid', 'Patient ID', { required: true }), mk('acc', 'Accession', { required: true }),
    mk('mod', 'Modality', { required: true, size: 4 }), mk('ae', 'Station AE', { required: true }), mk('date', 'Date', { type: 'date', required: true }),
    mk('time', 'Time', { type: 'time' }), mk('desc', 'Description'), h('button', { type: 'submit', id: 'wl-submit' }, 'Schedule')));
  }
  main.append(h('h1', {}, 'Worklist'), h('section', { class: 'card' }, h('h2', {}, 'Scheduled procedure steps'), list, create), editBox,
    h('section', { class: 'card' }, h('h2', {}, 'MPPS'), mpps));
  await Promise.all([load(), loadMpps()]);
}

// ---- audit (admin) ----

async function audit(main) {
  const verdict = h('div', { id: 'audit-verify' }, 'Verifying…'), list = h('div', {});
  const load = (offset) => attempt('audit', async () => {
    const page = await api('GET', `audit?offset=${offset}&limit=50`);
    list.replaceChildren(table(['#', 'When', 'Who', 'From', 'Action', 'Details'],
      page.items.map((e) => h('tr', {}, num(e.seq), td(fmtTime(e.at_us)), td(e.actor), td(e.source, 'mono'), td(e.action), td(JSON.stringify(e.details), 'mono'))),
      { empty: 'The log is empty.' }), pager(page, load));
  });
  main.append(h('h1', {}, 'Audit log'), h('section', { class: 'card' }, h('h2', {}, 'Chain verification'), verdict), h('section', { class: 'card' }, list));
  await attempt('verify', async () => {
    const v = await api('GET', 'audit/verify');
    verdict.replaceChildren(h('span', { class: 'pill ' + (v.ok ? 'ok' : 'bad') }, v.ok ? 'chain intact' : 'CHAIN BROKEN'),
      ` ${fmtInt(v.entries)} entries; head `, h('span', { class: 'mono' }, v.head),
      v.ok ? '' : h('div', { class: 'bad' }, `first bad entry ${v.first_bad ?? '?'}: ${v.problem ?? ''}`));
  });
  // Newest page first.
  const first = await api('GET', 'audit?limit=1');
  await load(Math.max(0, Math.floor(Math.max(0, first.total - 1) / 50) * 50));
}

// ---- users and tokens (admin) ----

async function users(main) {
  const ul = h('div', { id: 'users' }), tl = h('div', { id: 'tokens' }), shown = h('div', {});
  const roleSel = (id, v) => { const s = select(id, ['viewer', 'operator', 'admin'], v); s.id = id; return s; };
  const loadUsers = () => attempt('users', async () => {
    const page = await api('GET', 'users?limit=1000');
    ul.replaceChildren(table(['Name', 'Role', 'Created', 'Disabled', ''], page.items.map((u) => {
      const r = roleSel(`role-${u.name}`, u.role);
      r.setAttribute('aria-label', `Role of ${u.name}`);
      r.addEventListener('change', () => attempt('role', async () => { await api('PATCH', `users/${encodeURIComponent(u.name)}`, { role: r.value }); flash(`${u.name} is now ${r.value}.`); }));
      return h('tr', { 'data-user': u.name }, td(u.name), h('td', {}, r), td(fmtTime(u.created_at_us)), td(u.disabled ? 'yes' : 'no'),
        h('td', { class: 'row' },
          h('button', { type: 'button', class: 'secondary', onclick: () => attempt('user', async () => { await api('PATCH', `users/${encodeURIComponent(u.name)}`, { disabled: !u.disabled }); loadUsers(); }) }, u.disabled ? 'Enable' : 'Disable'),
          h('button', { type: 'button', class: 'secondary', onclick: () => {
            const pw = prompt(`New password for ${u.name} (at least 12 characters; ends the user's sessions):`);
            if (pw) attempt('password', async () => { await api('PATCH', `users/${encodeURIComponent(u.name)}`, { password: pw }); flash(`Password of ${u.name} changed.`); });
          } }, 'Set password'),
          h('button', { type: 'button', class: 'danger', onclick: () => { if (confirm(`Remove user ${u.name}?`)) attempt('user', async () => { await api('DELETE', `users/${encodeURIComponent(u.name)}`); loadUsers(); }); } }, 'Remove')));
    })));
  });
  const loadTokens = () => attempt('tokens', async () => {
    const page = await api('GET', 'tokens?limit=1000');
    tl.replaceChildren(table(['Id', 'Name', 'Role', 'Created', 'Expires', ''], page.items.map((t) => h('tr', {}, td(t.id, 'mono'), td(t.name), td(t.role), td(fmtTime(t.created_at_us)), td(t.expires_at_us ? fmtTime(t.expires_at_us) : 'never'),
      h('td', {}, t.id === session.me.token_id ? h('span', { class: 'muted' }, 'this session') : h('button', { type: 'button', class: 'danger', onclick: () => attempt('revoke', async () => { await api('DELETE', `tokens/${encodeURIComponent(t.id)}`); loadTokens(); }) }, 'Revoke'))))));
  });
  const [fn, un] = field('Name', 'new-user', { autocomplete: 'off' }), [fp, pw] = field('Password (12+ characters)', 'new-password', { type: 'password', minlength: 12, autocomplete: 'new-password' });
  const ur = roleSel('new-user-role', 'viewer');
  const [ftn, tn] = field('Label', 'new-token');
  const tr = roleSel('new-token-role', 'viewer');
  main.append(h('h1', {}, 'Users and tokens'),
    h('section', { class: 'card' }, h('h2', {}, 'Users'), ul,
      h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); attempt('add user', async () => { await api('POST', 'users', { name: un.value, role: ur.value, password: pw.value }); pw.value = ''; un.value = ''; loadUsers(); }); } },
        fn, fp, h('label', { for: 'new-user-role' }, 'Role', ur), h('button', { type: 'submit' }, 'Add user'))),
    h('section', { class: 'card' }, h('h2', {}, 'API tokens'), tl, shown,
      h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); attempt('create token', async () => {
        const t = await api('POST', 'tokens', { name: tn.value, role: tr.value });
        shown.replaceChildren(h('p', { class: 'token-once' }, 'Copy this token now; it is not shown again: ', h('span', { class: 'mono' }, t.token)));
        loadTokens();
      }); } }, ftn, h('label', { for: 'new-token-role' }, 'Role', tr), h('button', { type: 'submit' }, 'Create token'))));
  await Promise.all([loadUsers(), loadTokens()]);
}

export const VIEWS = {
  dashboard,
  studies,
  forwarding,
  worklist,
  audit: (m) => (can('admin') ? audit(m) : dashboard(m)),
  users: (m) => (can('admin') ? users(m) : dashboard(m)),
};
