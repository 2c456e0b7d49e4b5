// Lepus console: the pages. Each reads and changes the broker only through
// the management API; errors are shown in the API's words.

import {
  h, clear, api, get, enc, state, route, link, go, every, flash, flashError, errorText,
  confirmBox, action, pagedTable, listTable, kvTable, valueCell, liveChart, isAdmin, isMonitor,
  fmtNum, fmtRate, fmtBytes, fmtDuration, fmtTime, ApiError, start, refreshVhosts,
} from './app.js';

const vhostPath = (base) => (state.vhost ? `${base}/${enc(state.vhost)}` : base);
const rate = (o, k) => (o && o.message_stats ? fmtRate(o.message_stats[k + '_details']) : '');
const rateNum = (o, k) => (o && o[k + '_details'] ? o[k + '_details'].rate : null);
const xname = (n) => (n === '' ? 'amq.default' : n);
const queueLink = (vhost, name) => link(`queue/${enc(vhost)}/${enc(name)}`, name);
const exchangeLink = (vhost, name) => link(`exchange/${enc(vhost)}/${enc(xname(name))}`, name === '' ? '(AMQP default)' : name);

function parseJson(text, what) {
  if (!text.trim()) return {};
  try { return JSON.parse(text); } catch (e) { throw new Error(`${what} is not valid JSON: ${e.message}`); }
}

/** A labelled grid of fields and a submit button. */
function form(id, fields, submitLabel, onSubmit) {
  const f = h('form.form#' + id, { onsubmit: async (ev) => {
    ev.preventDefault();
    const btn = f.querySelector('button[type=submit]');
    btn.disabled = true;
    try { await onSubmit(); } catch (e) { flashError(e); } finally { btn.disabled = false; }
  } },
  fields.map(([label, input]) => [h('label', { for: input.id || null }, label), input]),
  h('div.buttons', h('button.primary', { type: 'submit' }, submitLabel)));
  return f;
}

const input = (id, attrs = {}) => h('input#' + id, attrs);
const select = (id, options, value) => h('select#' + id, options.map(([v, l]) => h('option', { value: v, selected: v === value }, l)));
const textarea = (id, attrs = {}) => h('textarea#' + id, { rows: 3, ...attrs });

// ===== Overview =====

async function parseFsync() {
  // /metrics is public; its fsync histogram gives latency since start.
  const r = await fetch('/metrics', { cache: 'no-store' });
  if (!r.ok) return null;
  const text = await r.text();
  const buckets = [];
  let sum = 0, count = 0;
  for (const line of text.split('\n')) {
    let m = line.match(/^lepus_store_fsync_seconds_bucket\{le="([^"]+)"\} (\S+)/);
    if (m) buckets.push([m[1] === '+Inf' ? Infinity : Number(m[1]), Number(m[2])]);
    m = line.match(/^lepus_store_fsync_seconds_sum (\S+)/);
    if (m) sum = Number(m[1]);
    m = line.match(/^lepus_store_fsync_seconds_count (\S+)/);
    if (m) count = Number(m[1]);
  }
  if (!count) return { count: 0 };
  const q = (p) => {
    const b = buckets.find(([, c]) => c >= p * count);
    return b ? b[0] : Infinity;
  };
  return { count, mean: sum / count, p50: q(0.5), p99: q(0.99) };
}

const ms = (s) => (s === Infinity ? '> 1 s' : (s * 1000).toFixed(s < 0.001 ? 2 : 1) + ' ms');

route('', async (main) => {
  const totals = h('div.totals#totals');
  const alarms = h('div#alarms');
  const rates = liveChart('Message rates (per second)', ['publish', 'deliver/get', 'ack', 'confirm'], { id: 'rates' });
  const queued = liveChart('Queued messages', ['ready', 'unacked', 'total'], { id: 'queued' });
  const nodes = h('div#nodes');
  const facts = h('div#node-facts');
  const listeners = h('div#listeners');
  clear(main,
    h('h1', 'Overview', h('span.sub#product')),
    alarms, totals,
    h('div.grid', rates.el, queued.el),
    h('h2', 'Node'), facts,
    h('h2', 'Cluster members'), nodes,
    h('h2', 'Listeners'), listeners);
  const total = (label, n, id) => h('div.total', { id: 'total-' + id }, h('div.n', fmtNum(n)), h('div.l', label));
  every(async () => {
    const o = await get('/api/overview');
    document.getElementById('product').textContent = `${o.product_name} ${o.product_version} · ${o.node}`;
    const qt = o.queue_totals || {}, ot = o.object_totals || {};
    clear(totals,
      total('Ready', qt.messages_ready, 'ready'), total('Unacked', qt.messages_unacknowledged, 'unacked'),
      total('Total messages', qt.messages, 'messages'),
      total('Connections', ot.connections, 'connections'), total('Channels', ot.channels, 'channels'),
      total('Exchanges', ot.exchanges, 'exchanges'), total('Queues', ot.queues, 'queues'),
      total('Consumers', ot.consumers, 'consumers'));
    const ms_ = o.message_stats || {};
    rates.push([rateNum(ms_, 'publish'), rateNum(ms_, 'deliver_get'), rateNum(ms_, 'ack'), rateNum(ms_, 'confirm')]);
    queued.push([qt.messages_ready, qt.messages_unacknowledged, qt.messages]);
    clear(alarms, (o.alarms || []).length ? h('div.error', 'Resource alarm: ' + o.alarms.join('; ') + ' (publishers are blocked)') : null);
    clear(listeners, listTable([
      { title: 'Protocol', cell: (l) => l.protocol }, { title: 'Address', cell: (l) => l.ip_address },
      { title: 'Port', cell: (l) => l.port, num: true }], o.listeners || []));
    if (!isMonitor()) {
      clear(facts, h('p.muted', 'Node details are for monitoring and administrator users.'));
      clear(nodes, h('p.muted', '—'));
      return;
    }
    let ns;
    try { ns = await get('/api/nodes'); } catch (e) { clear(facts, h('div.error', errorText(e))); return; }
    const fsync = await parseFsync().catch(() => null);
    const n = ns.find((x) => x.name === o.node) || ns[0] || {};
    clear(facts, h('div.card', kvTable({
      'Name': n.name,
      'Memory': n.mem_limit ? `${fmtBytes(n.mem_used)} of ${fmtBytes(n.mem_limit)} high watermark` : `${fmtBytes(n.mem_used)} (no high watermark)`,
      'Disk free': n.disk_free_limit ? `${fmtBytes(n.disk_free)} (limit ${fmtBytes(n.disk_free_limit)})` : `${fmtBytes(n.disk_free)} (no limit)`,
      'Alarms': (n.mem_alarm || n.disk_free_alarm) ? h('span.tag-alarm', [n.mem_alarm && 'memory', n.disk_free_alarm && 'disk'].filter(Boolean).join(', ')) : 'none',
      'Uptime': fmtDuration(n.uptime),
      'fsync latency': fsync && fsync.count ? `mean ${ms(fsync.mean)}, p50 ≤ ${ms(fsync.p50)}, p99 ≤ ${ms(fsync.p99)} (${fmtNum(fsync.count)} syncs)` : 'no syncs yet',
      'File descriptors': `${fmtNum(n.fd_used)} of ${fmtNum(n.fd_total)}`,
      'Processors': n.processors,
      'Store': o.store ? `${fmtBytes(o.store.disk_bytes)} on disk, ${fmtNum(o.store.segments)} segments` : undefined,
    })));
    // Cluster members: role and replication lag once the node objects carry them.
    const extra = ['role', 'isr', 'lag_bytes', 'lag_ms'].filter((k) => ns.some((x) => x[k] !== undefined));
    const cols = [{ title: 'Name', cell: (x) => x.name },
      { title: 'Running', cell: (x) => (x.running ? 'yes' : 'no') }];
    const fmt = { role: (v) => v, isr: (v) => (v ? 'yes' : 'no'), lag_bytes: fmtBytes, lag_ms: (v) => fmtNum(v) + ' ms' };
    const titles = { role: 'Role', isr: 'In sync', lag_bytes: 'Lag (bytes)', lag_ms: 'Lag (time)' };
    for (const k of extra) cols.push({ title: titles[k], cell: (x) => (x[k] === undefined || x[k] === null ? '' : fmt[k](x[k])), num: k.startsWith('lag') });
    cols.push({ title: 'Uptime', cell: (x) => fmtDuration(x.uptime), num: true });
    clear(nodes, listTable(cols, ns, 'None', 'members'));
  });
}, { section: 'overview' });

// ===== Queues =====

const FEATURES = [
  ['x-message-ttl', 'TTL', 'message TTL'], ['x-expires', 'Exp', 'queue expires'],
  ['x-dead-letter-exchange', 'DLX', 'dead-letter exchange'], ['x-dead-letter-routing-key', 'DLK', 'dead-letter routing key'],
  ['x-max-length', 'Lim', 'max length'], ['x-max-length-bytes', 'Lim B', 'max length bytes'],
  ['x-overflow', 'Ovfl', 'overflow'], ['x-single-active-consumer', 'SAC', 'single active consumer'],
  ['x-max-priority', 'Pri', 'max priority'], ['x-delivery-limit', 'DLim', 'delivery limit'],
  ['x-message-deduplication', 'Dedup', 'deduplication'],
];

function features(q) {
  const out = [];
  if (q.durable) out.push(h('span.feat', { title: 'durable' }, 'D'));
  if (q.auto_delete) out.push(h('span.feat', { title: 'auto-delete' }, 'AD'));
  if (q.exclusive) out.push(h('span.feat', { title: 'exclusive' }, 'Excl'));
  if (q.internal) out.push(h('span.feat', { title: 'internal' }, 'I'));
  const args = q.arguments || {};
  for (const [k, label, title] of FEATURES) {
    if (args[k] !== undefined && args[k] !== false) out.push(h('span.feat', { title: `${title}: ${JSON.stringify(args[k])}` }, label));
  }
  return out;
}

function declareQueueForm(onDone) {
  const vh = input('new-queue-vhost', { value: state.vhost || '/' });
  const name = input('new-queue-name', { required: true });
  const type = select('new-queue-type', [['classic', 'classic'], ['quorum', 'quorum']], 'classic');
  const durable = select('new-queue-durable', [['true', 'durable'], ['false', 'transient']], 'true');
  const args = textarea('new-queue-args', { placeholder: '{"x-max-length": 1000}' });
  return form('declare-queue', [['Vhost', vh], ['Name', name], ['Type', type], ['Durability', durable], ['Arguments (JSON)', args]],
    'Add queue', async () => {
      const a = parseJson(args.value, 'Arguments');
      if (type.value === 'quorum') a['x-queue-type'] = 'quorum';
      await api('PUT', `/api/queues/${enc(vh.value)}/${enc(name.value)}`, { durable: durable.value === 'true', arguments: a });
      flash(`Queue '${name.value}' declared`);
      name.value = '';
      onDone();
    });
}

route('queues', async (main) => {
  const t = pagedTable({
    id: 'queues-table',
    path: () => vhostPath('/api/queues'),
    fetchCols: ['name', 'vhost', 'type', 'durable', 'auto_delete', 'exclusive', 'arguments', 'policy', 'state',
      'messages_ready', 'messages_unacknowledged', 'messages', 'consumers', 'message_stats'],
    columns: [
      ...(state.vhost ? [] : [{ title: 'Vhost', key: 'vhost', cell: (q) => q.vhost }]),
      { title: 'Name', key: 'name', cell: (q) => queueLink(q.vhost, q.name) },
      { title: 'Type', key: 'type', cell: (q) => q.type },
      { title: 'Features', cell: features },
      { title: 'Policy', key: 'policy', cell: (q) => q.policy || '' },
      { title: 'State', key: 'state', cell: (q) => h('span.state-' + q.state, q.state) },
      { title: 'Ready', key: 'messages_ready', cell: (q) => fmtNum(q.messages_ready), num: true },
      { title: 'Unacked', key: 'messages_unacknowledged', cell: (q) => fmtNum(q.messages_unacknowledged), num: true },
      { title: 'Total', key: 'messages', cell: (q) => fmtNum(q.messages), num: true },
      { title: 'Consumers', key: 'consumers', cell: (q) => fmtNum(q.consumers), num: true },
      { title: 'Incoming', key: 'message_stats.publish_details.rate', cell: (q) => rate(q, 'publish'), num: true },
      { title: 'Deliver/get', key: 'message_stats.deliver_get_details.rate', cell: (q) => rate(q, 'deliver_get'), num: true },
      { title: 'Ack', key: 'message_stats.ack_details.rate', cell: (q) => rate(q, 'ack'), num: true },
    ],
  });
  clear(main, h('h1', 'Queues', h('span.sub', state.vhost ? `vhost ${state.vhost}` : 'all vhosts')), t.el,
    h('details.section', h('summary', 'Add a queue'), declareQueueForm(() => t.reload())));
  every(t.reload);
}, { section: 'queues' });

function messageView(m, i) {
  return h('div.msg', { 'data-index': i },
    h('div', h('b', `Message ${i + 1}`), ' · ', `exchange ${m.exchange === '' ? '(AMQP default)' : m.exchange}`,
      ' · ', `routing key ${m.routing_key}`, ' · ', m.redelivered ? 'redelivered' : 'first delivery',
      ' · ', `${fmtNum(m.message_count)} left in queue`),
    h('div', 'Properties'), kvTable(m.properties, { empty: 'none' }),
    h('div', `Payload (${fmtNum(m.payload_bytes)} bytes, ${m.payload_encoding})`),
    h('pre.payload', m.payload));
}

/** The publish form: for an exchange (routing key asked) or a queue (via the default exchange). */
function publishForm(vhost, exchange, fixedKey) {
  const key = input('publish-key', { value: fixedKey || '' });
  const mode = select('publish-mode', [['1', '1 - non-persistent'], ['2', '2 - persistent']], '2');
  const headers = textarea('publish-headers', { rows: 2, placeholder: '{"x-delay": 5000}' });
  const props = textarea('publish-props', { rows: 2, placeholder: '{"message_id": "m1", "content_type": "text/plain"}' });
  const payload = textarea('publish-payload', { rows: 4 });
  const fields = [];
  if (fixedKey === undefined) fields.push(['Routing key', key]);
  fields.push(['Delivery mode', mode], ['Headers (JSON)', headers], ['Properties (JSON)', props], ['Payload', payload]);
  return form('publish-form', fields, 'Publish message', async () => {
    const properties = parseJson(props.value, 'Properties');
    properties.delivery_mode = Number(mode.value);
    const hd = parseJson(headers.value, 'Headers');
    if (Object.keys(hd).length) properties.headers = hd;
    const r = await api('POST', `/api/exchanges/${enc(vhost)}/${enc(xname(exchange))}/publish`,
      { properties, routing_key: key.value, payload: payload.value, payload_encoding: 'string' });
    flash(r.routed ? 'Message published.' : 'Message published, but not routed.', r.routed ? 'ok' : 'error');
  });
}

function bindingsTable(vhost, rows, dir, onChange) {
  const cols = [];
  if (dir !== 'from') cols.push({ title: 'From', cell: (b) => exchangeLink(vhost, b.source) });
  if (dir !== 'to') {
    cols.push({ title: 'To', cell: (b) => (b.destination_type === 'queue' ? queueLink(vhost, b.destination) : exchangeLink(vhost, b.destination)) });
    cols.push({ title: 'Type', cell: (b) => b.destination_type });
  }
  cols.push({ title: 'Routing key', cell: (b) => b.routing_key });
  cols.push({ title: 'Arguments', cell: (b) => (Object.keys(b.arguments || {}).length ? JSON.stringify(b.arguments) : '') });
  cols.push({ title: '', cell: (b) => (b.source === '' ? h('span.muted', 'default binding') :
    action('Unbind', async () => {
      await api('DELETE', `/api/bindings/${enc(vhost)}/e/${enc(b.source)}/${b.destination_type === 'queue' ? 'q' : 'e'}/${enc(b.destination)}/${enc(b.properties_key)}`);
      flash('Unbound');
      onChange();
    })) });
  return listTable(cols, rows, 'No bindings');
}

route('queue/:vhost/:name', async (main, p) => {
  const base = `/api/queues/${enc(p.vhost)}/${enc(p.name)}`;
  const info = h('div#queue-info');
  const consumers = h('div#queue-consumers');
  const bindings = h('div#queue-bindings');
  const chart = liveChart('Queue rates (per second)', ['publish', 'deliver/get', 'ack', 'redeliver'], { id: 'queue-rates' });
  const depth = liveChart('Messages', ['ready', 'unacked'], { id: 'queue-depth' });

  // get messages
  const getCount = input('get-count', { type: 'number', value: 1, min: 1 });
  const ackmode = select('get-ackmode', [['ack_requeue_true', 'Nack message, requeue true'],
    ['reject_requeue_true', 'Reject, requeue true'], ['ack_requeue_false', 'Automatic ack (removes them)']], 'ack_requeue_true');
  const encoding = select('get-encoding', [['auto', 'auto: string or base64'], ['base64', 'base64']], 'auto');
  const truncate = input('get-truncate', { type: 'number', value: 50000, min: 1 });
  const got = h('div#got-messages');
  const getForm = form('get-form', [['Messages', getCount], ['Ack mode', ackmode], ['Encoding', encoding], ['Truncate at (bytes)', truncate]],
    'Get messages', async () => {
      const ms = await api('POST', base + '/get', { count: Number(getCount.value), ackmode: ackmode.value,
        encoding: encoding.value, truncate: Number(truncate.value) });
      clear(got, ms.length ? ms.map(messageView) : h('p.muted#queue-empty', 'Queue is empty'));
      refresh();
    });

  // bind
  const bindEx = input('bind-exchange', { required: true });
  const bindKey = input('bind-key');
  const bindArgs = textarea('bind-args', { rows: 2 });
  const bindForm = form('bind-form', [['From exchange', bindEx], ['Routing key', bindKey], ['Arguments (JSON)', bindArgs]], 'Bind', async () => {
    await api('POST', `/api/bindings/${enc(p.vhost)}/e/${enc(bindEx.value)}/q/${enc(p.name)}`,
      { routing_key: bindKey.value, arguments: parseJson(bindArgs.value, 'Arguments') });
    flash(`Bound to '${bindEx.value}'`);
    loadBindings();
  });

  // move
  const moveDest = input('move-destination', { required: true });
  const progress = h('progress#move-progress', { hidden: true, max: 1, value: 0 });
  const moveStatus = h('span#move-status');
  const moveForm = form('move-form', [['Destination queue', moveDest], ['', h('div', progress, ' ', moveStatus)]], 'Move messages', async () => {
    const dest = moveDest.value;
    if (!(await confirmBox(`Move every ready message from '${p.name}' to '${dest}'?`, 'Move'))) return;
    let moved = 0;
    const q0 = await get(base + '?columns=messages_ready');
    const total = Math.max(1, q0.messages_ready);
    progress.hidden = false; progress.max = total; progress.value = 0;
    // One safe batch per call (copies synced before originals go); bounded.
    for (let i = 0; i < 1_000_000; i++) {
      const r = await api('POST', base + '/move', { destination: dest, count: 1000 });
      moved += r.moved;
      progress.max = Math.max(total, moved + r.remaining);
      progress.value = moved;
      moveStatus.textContent = `${fmtNum(moved)} moved, ${fmtNum(r.remaining)} left`;
      if (r.moved === 0 || r.remaining === 0) break;
    }
    flash(`Moved ${fmtNum(moved)} messages to '${dest}'`);
    refresh();
  });

  clear(main,
    h('h1', 'Queue ', h('span#queue-name', p.name), h('span.sub', `in vhost ${p.vhost}`)),
    h('div.actions',
      action('Purge messages', async () => {
        if (!(await confirmBox(`Purge every ready message from '${p.name}'?`, 'Purge'))) return;
        await api('DELETE', base + '/contents');
        flash(`Queue '${p.name}' purged`);
        refresh();
      }, { id: 'purge-queue', class: 'danger' }),
      action('Delete queue', async () => {
        if (!(await confirmBox(`Delete the queue '${p.name}' and its messages?`, 'Delete'))) return;
        await api('DELETE', base);
        flash(`Queue '${p.name}' deleted`);
        go('/queues');
      }, { id: 'delete-queue', class: 'danger' })),
    info,
    h('div.grid', chart.el, depth.el),
    h('h2', 'Consumers'), consumers,
    h('h2', 'Bindings'), bindings,
    h('details.section#section-bind', h('summary', 'Add a binding'), bindForm),
    h('details.section#section-publish', h('summary', 'Publish message'), h('p.muted', 'Published to the default exchange with the queue\'s name as routing key.'),
      publishForm(p.vhost, '', p.name)),
    h('details.section#section-get', { open: true }, h('summary', 'Get messages'), getForm, got),
    h('details.section#section-move', h('summary', 'Move messages'),
      h('p.muted', 'Each ready message is published to the destination (same properties and body) and removed from this queue only once the copy is stored, as lepusctl move does.'),
      moveForm));

  async function loadBindings() {
    try {
      clear(bindings, bindingsTable(p.vhost, await get(base + '/bindings'), 'to', loadBindings));
    } catch (e) { clear(bindings, h('div.error', errorText(e))); }
  }
  loadBindings();

  const refresh = every(async () => {
    let q;
    try { q = await get(base); } catch (e) { clear(info, h('div.error', errorText(e))); throw e; }
    const ms_ = q.message_stats || {};
    chart.push([rateNum(ms_, 'publish'), rateNum(ms_, 'deliver_get'), rateNum(ms_, 'ack'), rateNum(ms_, 'redeliver')]);
    depth.push([q.messages_ready, q.messages_unacknowledged]);
    clear(info, h('div.grid',
      h('div.card', kvTable({
        'Type': q.type, 'Features': h('span', features(q)), 'State': q.state, 'Policy': q.policy || 'none',
        'Consumers': fmtNum(q.consumers),
        'Exclusive owner': q.owner_pid_details ? q.owner_pid_details.name : undefined,
      })),
      h('div.card', kvTable({
        'Ready': h('span#queue-ready', fmtNum(q.messages_ready)),
        'Unacked': h('span#queue-unacked', fmtNum(q.messages_unacknowledged)),
        'Total': h('span#queue-total', fmtNum(q.messages)),
        'Memory (estimate)': fmtBytes(q.memory),
        'Published': fmtNum(ms_.publish), 'Delivered/got': fmtNum(ms_.deliver_get), 'Acked': fmtNum(ms_.ack),
      })),
      h('div.card', h('h4', 'Arguments'), kvTable(q.arguments, { empty: 'No arguments' }))));
    clear(consumers, listTable([
      { title: 'Channel', cell: (c) => link(`channel/${enc(c.channel_details.name)}`, c.channel_details.name) },
      { title: 'Consumer tag', cell: (c) => c.consumer_tag },
      { title: 'Ack required', cell: (c) => (c.ack_required ? 'yes' : 'no') },
      { title: 'Exclusive', cell: (c) => (c.exclusive ? 'yes' : 'no') },
      { title: 'Prefetch', cell: (c) => fmtNum(c.prefetch_count), num: true },
      { title: 'Priority', cell: (c) => fmtNum(c.priority), num: true },
      { title: 'Active', cell: (c) => (c.active ? 'yes' : 'no') },
      { title: 'Arguments', cell: (c) => (Object.keys(c.arguments || {}).length ? JSON.stringify(c.arguments) : '') },
    ], q.consumer_details || [], 'No consumers'));
  });
}, { section: 'queues' });

// ===== Exchanges =====

route('exchanges', async (main) => {
  const t = pagedTable({
    id: 'exchanges-table',
    path: () => vhostPath('/api/exchanges'),
    fetchCols: ['name', 'vhost', 'type', 'durable', 'auto_delete', 'internal', 'arguments', 'policy', 'delayed'],
    columns: [
      ...(state.vhost ? [] : [{ title: 'Vhost', key: 'vhost', cell: (x) => x.vhost }]),
      { title: 'Name', key: 'name', cell: (x) => exchangeLink(x.vhost, x.name) },
      { title: 'Type', key: 'type', cell: (x) => x.type },
      { title: 'Features', cell: features },
      { title: 'Policy', key: 'policy', cell: (x) => x.policy || '' },
      { title: 'Delayed pending', key: 'delayed.pending', cell: (x) => (x.delayed ? link(`delayed/${enc(x.vhost)}/${enc(x.name)}`, fmtNum(x.delayed.pending)) : ''), num: true },
    ],
  });
  const vh = input('new-exchange-vhost', { value: state.vhost || '/' });
  const name = input('new-exchange-name', { required: true });
  const type = select('new-exchange-type', ['direct', 'fanout', 'topic', 'headers', 'x-delayed-message', 'x-consistent-hash'].map((x) => [x, x]), 'direct');
  const args = textarea('new-exchange-args', { placeholder: '{"x-delayed-type": "direct"}' });
  clear(main, h('h1', 'Exchanges', h('span.sub', state.vhost ? `vhost ${state.vhost}` : 'all vhosts')), t.el,
    h('details.section', h('summary', 'Add an exchange'),
      form('declare-exchange', [['Vhost', vh], ['Name', name], ['Type', type], ['Arguments (JSON)', args]], 'Add exchange', async () => {
        await api('PUT', `/api/exchanges/${enc(vh.value)}/${enc(name.value)}`, { type: type.value, durable: true, arguments: parseJson(args.value, 'Arguments') });
        flash(`Exchange '${name.value}' declared`);
        t.reload();
      })));
  every(t.reload);
}, { section: 'exchanges' });

route('exchange/:vhost/:name', async (main, p) => {
  const base = `/api/exchanges/${enc(p.vhost)}/${enc(p.name)}`;
  const shown = p.name === 'amq.default' ? '(AMQP default)' : p.name;
  const info = h('div#exchange-info');
  const src = h('div#bindings-source');
  const dst = h('div#bindings-destination');
  const destType = select('xbind-type', [['q', 'queue'], ['e', 'exchange']], 'q');
  const dest = input('xbind-dest', { required: true });
  const key = input('xbind-key');
  const args = textarea('xbind-args', { rows: 2 });
  const load = async () => {
    const x = await get(base);
    clear(info, h('div.grid', h('div.card', kvTable({
      'Type': x.type, 'Features': h('span', features(x)), 'Policy': x.policy || 'none',
      'Delayed': x.delayed ? h('span', `${fmtNum(x.delayed.pending)} pending · `, link(`delayed/${enc(p.vhost)}/${enc(p.name)}`, 'show them')) : undefined,
    })), h('div.card', h('h4', 'Arguments'), kvTable(x.arguments, { empty: 'No arguments' }))));
    clear(src, bindingsTable(p.vhost, await get(base + '/bindings/source'), 'from', load));
    clear(dst, bindingsTable(p.vhost, await get(base + '/bindings/destination'), 'to', load));
  };
  const isDefault = p.name === 'amq.default';
  clear(main,
    h('h1', 'Exchange ', h('span#exchange-name', shown), h('span.sub', `in vhost ${p.vhost}`)),
    isDefault || p.name.startsWith('amq.') ? null : h('div.actions', action('Delete exchange', async () => {
      if (!(await confirmBox(`Delete the exchange '${p.name}'?`, 'Delete'))) return;
      await api('DELETE', base);
      flash(`Exchange '${p.name}' deleted`);
      go('/exchanges');
    }, { id: 'delete-exchange', class: 'danger' })),
    info,
    h('h2', 'Bindings from this exchange'), src,
    h('h2', 'Bindings to this exchange'), dst,
    isDefault ? null : h('details.section', h('summary', 'Add a binding from this exchange'),
      form('xbind-form', [['To', destType], ['Name', dest], ['Routing key', key], ['Arguments (JSON)', args]], 'Bind', async () => {
        await api('POST', `/api/bindings/${enc(p.vhost)}/e/${enc(p.name)}/${destType.value}/${enc(dest.value)}`,
          { routing_key: key.value, arguments: parseJson(args.value, 'Arguments') });
        flash('Bound');
        load();
      })),
    h('details.section#section-publish', h('summary', 'Publish message'), publishForm(p.vhost, isDefault ? '' : p.name)));
  every(load);
}, { section: 'exchanges' });

// ===== Delayed messages =====

route('delayed', async (main) => {
  const list = h('div#delayed-exchanges');
  clear(main, h('h1', 'Delayed messages', h('span.sub', 'x-delayed-message exchanges and their pending messages')), list);
  every(async () => {
    // Exchanges are few next to queues: one call, then keep the delayed ones.
    const xs = await get(vhostPath('/api/exchanges') + '?columns=name,vhost,type,delayed');
    const ds = xs.filter((x) => x.delayed);
    clear(list, listTable([
      { title: 'Vhost', cell: (x) => x.vhost },
      { title: 'Exchange', cell: (x) => link(`delayed/${enc(x.vhost)}/${enc(x.name)}`, x.name) },
      { title: 'Pending', cell: (x) => fmtNum(x.delayed.pending), num: true },
      { title: 'Next due', cell: (x) => (x.delayed.next_due ? fmtTime(x.delayed.next_due) : '—') },
      { title: 'Released', cell: (x) => fmtNum(x.delayed.released), num: true },
    ], ds, 'No delayed exchanges (declare one with type x-delayed-message)', 'delayed-table'));
  });
}, { section: 'delayed' });

route('delayed/:vhost/:name', async (main, p) => {
  const xbase = `/api/exchanges/${enc(p.vhost)}/${enc(p.name)}`;
  const base = xbase + '/delayed';
  const pageSize = 50;
  let offset = 0;
  const summary = h('div#delayed-summary');
  const rows = h('div#delayed-rows');
  const pager = h('span.pager-info');
  const prev = h('button', { onclick: () => { offset = Math.max(0, offset - pageSize); refresh(); } }, '‹ Prev');
  const next = h('button', { onclick: () => { offset += pageSize; refresh(); } }, 'Next ›');
  const cancelId = input('cancel-message-id', { required: true });
  const cancel = async (id) => {
    const r = await api('DELETE', `${base}/${enc(id)}`);
    flash(`Cancelled ${r.cancelled} message(s) with message-id '${id}'`);
    refresh();
  };
  clear(main,
    h('h1', 'Delayed messages in ', exchangeLink(p.vhost, p.name), h('span.sub', `vhost ${p.vhost}`)),
    summary,
    h('div.actions', action('Purge all pending', async () => {
      if (!(await confirmBox(`Drop every pending message of '${p.name}'?`, 'Purge'))) return;
      const r = await api('DELETE', base);
      flash(`Purged ${fmtNum(r.purged)} pending messages`);
      offset = 0;
      refresh();
    }, { id: 'purge-delayed', class: 'danger' })),
    h('details.section', h('summary', 'Cancel by message-id'),
      form('cancel-form', [['message-id', cancelId]], 'Cancel', () => cancel(cancelId.value))),
    h('div.table-tools', h('span.spacer'), pager, prev, next),
    rows);
  const refresh = every(async () => {
    const x = await get(xbase);
    const d = x.delayed || { pending: 0 };
    clear(summary, h('div.totals',
      h('div.total#delayed-pending', h('div.n', fmtNum(d.pending)), h('div.l', 'Pending')),
      h('div.total', h('div.n', d.next_due ? fmtDuration(d.next_due - Date.now()) : '—'), h('div.l', d.next_due ? 'Next due in (' + fmtTime(d.next_due) + ')' : 'Next due')),
      h('div.total', h('div.n', fmtNum(d.released)), h('div.l', 'Released since start'))));
    if (offset && offset >= d.pending) offset = Math.max(0, Math.floor((d.pending - 1) / pageSize) * pageSize);
    const list = await get(`${base}?limit=${pageSize}&offset=${offset}`);
    pager.textContent = d.pending ? `${fmtNum(offset + 1)}–${fmtNum(offset + list.length)} of ${fmtNum(d.pending)}` : '';
    prev.disabled = offset === 0;
    next.disabled = offset + pageSize >= d.pending;
    clear(rows, listTable([
      { title: 'Due', cell: (m) => fmtTime(m.due) },
      { title: 'Due in', cell: (m) => fmtDuration(m.due_in_ms), num: true },
      { title: 'Routing key', cell: (m) => m.routing_key },
      { title: 'message-id', cell: (m) => m.message_id || h('span.muted', 'none') },
      { title: 'Size', cell: (m) => fmtBytes(m.payload_bytes), num: true },
      { title: 'Persistent', cell: (m) => (m.persistent ? 'yes' : 'no') },
      { title: '', cell: (m) => (m.message_id ? action('Cancel', async () => {
        if (!(await confirmBox(`Cancel the pending message(s) with message-id '${m.message_id}'?`, 'Cancel message'))) return;
        await cancel(m.message_id);
      }, { class: 'danger cancel-delayed', 'data-message-id': m.message_id }) : '') },
    ], list, 'Nothing pending', 'pending-table'));
  });
}, { section: 'delayed' });

// ===== Connections and channels =====

route('connections', async (main) => {
  const t = pagedTable({
    id: 'connections-table',
    path: () => (state.vhost ? `/api/vhosts/${enc(state.vhost)}/connections` : '/api/connections'),
    fetchCols: ['name', 'user', 'vhost', 'state', 'channels', 'client_properties.product', 'user_provided_name', 'ssl', 'protocol', 'connected_at'],
    columns: [
      { title: 'Name', key: 'name', cell: (c) => link(`connection/${enc(c.name)}`, c.name) },
      { title: 'User-provided name', key: 'user_provided_name', cell: (c) => c.user_provided_name || '' },
      { title: 'User', key: 'user', cell: (c) => c.user },
      { title: 'Vhost', key: 'vhost', cell: (c) => c.vhost },
      { title: 'State', key: 'state', cell: (c) => c.state },
      { title: 'TLS', cell: (c) => (c.ssl === undefined ? '' : c.ssl ? 'yes' : 'no') },
      { title: 'Client', cell: (c) => (c.client_properties && c.client_properties.product) || '' },
      { title: 'Channels', key: 'channels', cell: (c) => fmtNum(c.channels), num: true },
      { title: 'Connected at', key: 'connected_at', cell: (c) => fmtTime(c.connected_at) },
    ],
  });
  clear(main, h('h1', 'Connections'), t.el);
  every(t.reload);
}, { section: 'connections' });

function channelsColumns() {
  return [
    { title: 'Channel', key: 'name', cell: (c) => link(`channel/${enc(c.name)}`, c.name) },
    { title: 'User', key: 'user', cell: (c) => c.user },
    { title: 'Vhost', key: 'vhost', cell: (c) => c.vhost },
    { title: 'State', key: 'state', cell: (c) => c.state },
    { title: 'Consumers', key: 'consumer_count', cell: (c) => fmtNum(c.consumer_count), num: true },
    { title: 'Unacked', key: 'messages_unacknowledged', cell: (c) => fmtNum(c.messages_unacknowledged), num: true },
    { title: 'Prefetch', key: 'prefetch_count', cell: (c) => fmtNum(c.prefetch_count), num: true },
    { title: 'Confirm', cell: (c) => (c.confirm === undefined ? '' : c.confirm ? 'yes' : 'no') },
  ];
}

route('connection/:name', async (main, p) => {
  const base = `/api/connections/${enc(p.name)}`;
  const info = h('div#connection-info');
  const chans = h('div#connection-channels');
  const traffic = liveChart('Traffic (bytes per second)', ['received', 'sent'], { id: 'connection-traffic' });
  const reason = input('close-reason', { value: 'Closed via management plugin', size: 40 });
  let last = null;
  clear(main, h('h1', 'Connection ', h('span', p.name)),
    h('div.actions', reason, action('Force close', async () => {
      if (!(await confirmBox(`Close the connection '${p.name}'?`, 'Close'))) return;
      await api('DELETE', base, null, { 'X-Reason': reason.value });
      flash('Connection closed');
      go('/connections');
    }, { id: 'close-connection', class: 'danger' })),
    info, traffic.el, h('h2', 'Channels'), chans);
  every(async () => {
    let c;
    try { c = await get(base); } catch (e) { clear(info, h('div.error', errorText(e))); throw e; }
    const now = Date.now();
    if (last) {
      // Rates from the byte counters the API has (recv_oct may be absent).
      const secs = (now - last.t) / 1000;
      const d = (a, b) => (typeof a === 'number' && typeof b === 'number' ? Math.max(0, a - b) / secs : null);
      traffic.push([d(c.recv_oct, last.recv), d(c.send_oct, last.send)]);
    }
    last = { t: now, recv: c.recv_oct, send: c.send_oct };
    const tls = {};
    for (const k of ['ssl', 'ssl_protocol', 'ssl_cipher', 'ssl_key_exchange', 'ssl_hash', 'peer_cert_subject', 'peer_cert_issuer', 'peer_cert_validity']) {
      if (c[k] !== undefined) tls[k] = c[k];
    }
    clear(info, h('div.grid',
      h('div.card', kvTable({
        'User': c.user, 'Vhost': c.vhost, 'State': c.state, 'Protocol': c.protocol,
        'Peer': `${c.peer_host}:${c.peer_port}`, 'Connected at': fmtTime(c.connected_at),
        'User-provided name': c.user_provided_name || undefined,
        'Frame max': fmtNum(c.frame_max), 'Channel max': c.channel_max === undefined ? undefined : fmtNum(c.channel_max),
        'Heartbeat': c.timeout === undefined ? undefined : `${c.timeout} s`,
        'Received': c.recv_oct === undefined ? undefined : fmtBytes(c.recv_oct),
        'Sent': c.send_oct === undefined ? undefined : fmtBytes(c.send_oct),
      })),
      h('div.card#connection-tls', h('h4', 'TLS'), Object.keys(tls).length ? kvTable(tls) : h('p.muted', 'No TLS details from the broker')),
      h('div.card#client-properties', h('h4', 'Client properties'), kvTable(c.client_properties))));
    clear(chans, listTable(channelsColumns(), await get(base + '/channels'), 'No channels'));
  });
}, { section: 'connections' });

route('channels', async (main) => {
  const t = pagedTable({
    id: 'channels-table',
    path: () => (state.vhost ? `/api/vhosts/${enc(state.vhost)}/channels` : '/api/channels'),
    columns: channelsColumns(),
  });
  clear(main, h('h1', 'Channels'), t.el);
  every(t.reload);
}, { section: 'channels' });

route('channel/:name', async (main, p) => {
  const info = h('div');
  clear(main, h('h1', 'Channel ', p.name), info);
  every(async () => {
    const c = await get(`/api/channels/${enc(p.name)}`);
    clear(info, h('div.card', kvTable({
      'Connection': link(`connection/${enc(c.connection_details.name)}`, c.connection_details.name),
      'Number': c.number, 'User': c.user, 'Vhost': c.vhost, 'State': c.state,
      'Consumers': c.consumer_count, 'Unacked': c.messages_unacknowledged,
      'Prefetch': c.prefetch_count, 'Global prefetch': c.global_prefetch_count,
      'Confirm mode': c.confirm, 'Transactional': c.transactional,
    })));
  });
}, { section: 'channels' });

// ===== Admin =====

const ADMIN_TABS = [['users', 'Users'], ['vhosts', 'Virtual hosts'], ['permissions', 'Permissions'],
  ['policies', 'Policies'], ['definitions', 'Definitions']];

function adminPage(tab) {
  return async (main) => {
    const body = h('div#admin-body');
    clear(main, h('h1', 'Admin'),
      h('div.tabs', ADMIN_TABS.map(([k, l]) => h('a' + (k === tab ? '.active' : ''), { href: `#/admin/${k}`, id: 'tab-' + k }, l))),
      body);
    if (!isAdmin()) {
      // Not hidden from the URL bar: ask the API, and show its refusal.
      try { await get('/api/users'); } catch (e) { clear(body, h('div.error#admin-refused', errorText(e))); return; }
    }
    await ADMIN[tab](body);
  };
}

const ADMIN = {
  async users(body) {
    const list = h('div#users');
    const load = async () => clear(list, listTable([
      { title: 'Name', cell: (u) => u.name },
      { title: 'Tags', cell: (u) => (Array.isArray(u.tags) ? u.tags.join(', ') : u.tags) },
      { title: '', cell: (u) => action('Delete', async () => {
        if (!(await confirmBox(`Delete the user '${u.name}'?`, 'Delete'))) return;
        await api('DELETE', `/api/users/${enc(u.name)}`);
        flash(`User '${u.name}' deleted`);
        load();
      }, { class: 'danger' }) },
    ], await get('/api/users'), 'No users', 'users-table'));
    const name = input('new-user-name', { required: true });
    const pass = input('new-user-password', { type: 'password' });
    const tags = input('new-user-tags', { placeholder: 'administrator, monitoring, management, policymaker' });
    clear(body, list, h('h2', 'Add or update a user'),
      form('user-form', [['Name', name], ['Password', pass], ['Tags', tags]], 'Save user', async () => {
        await api('PUT', `/api/users/${enc(name.value)}`, { password: pass.value, tags: tags.value });
        flash(`User '${name.value}' saved`);
        load();
      }));
    await load();
  },
  async vhosts(body) {
    const list = h('div#vhosts');
    const load = async () => {
      clear(list, listTable([
        { title: 'Name', cell: (v) => v.name },
        { title: 'Messages', cell: (v) => fmtNum(v.messages), num: true },
        { title: '', cell: (v) => action('Delete', async () => {
          if (!(await confirmBox(`Delete the vhost '${v.name}' with every queue and exchange in it?`, 'Delete'))) return;
          await api('DELETE', `/api/vhosts/${enc(v.name)}`);
          flash(`Vhost '${v.name}' deleted`);
          load();
          refreshVhosts();
        }, { class: 'danger' }) },
      ], await get('/api/vhosts'), 'No vhosts', 'vhosts-table'));
    };
    const name = input('new-vhost-name', { required: true });
    clear(body, list, h('h2', 'Add a vhost'), form('vhost-form', [['Name', name]], 'Add vhost', async () => {
      await api('PUT', `/api/vhosts/${enc(name.value)}`, {});
      flash(`Vhost '${name.value}' added`);
      load();
      refreshVhosts();
    }));
    await load();
  },
  async permissions(body) {
    const list = h('div#permissions');
    const load = async () => clear(list, listTable([
      { title: 'User', cell: (x) => x.user }, { title: 'Vhost', cell: (x) => x.vhost },
      { title: 'Configure', cell: (x) => h('code', x.configure) }, { title: 'Write', cell: (x) => h('code', x.write) },
      { title: 'Read', cell: (x) => h('code', x.read) },
      { title: '', cell: (x) => action('Clear', async () => {
        await api('DELETE', `/api/permissions/${enc(x.vhost)}/${enc(x.user)}`);
        flash('Permissions cleared');
        load();
      }, { class: 'danger' }) },
    ], await get('/api/permissions'), 'No permissions', 'permissions-table'));
    const user = input('perm-user', { required: true });
    const vhost = input('perm-vhost', { value: '/' });
    const c = input('perm-configure', { value: '.*' });
    const w = input('perm-write', { value: '.*' });
    const r = input('perm-read', { value: '.*' });
    clear(body, list, h('h2', 'Set permissions'),
      form('perm-form', [['User', user], ['Vhost', vhost], ['Configure regexp', c], ['Write regexp', w], ['Read regexp', r]], 'Set permissions', async () => {
        await api('PUT', `/api/permissions/${enc(vhost.value)}/${enc(user.value)}`, { configure: c.value, write: w.value, read: r.value });
        flash('Permissions set');
        load();
      }));
    await load();
  },
  async policies(body) {
    // Policies may not exist in this broker yet: show the API's own answer.
    let ps;
    try {
      ps = await get('/api/policies');
    } catch (e) {
      if (e.status === 404) {
        clear(body, h('p.muted#policies-missing', `This broker has no policies API (/api/policies answered ${e.status}: ${errorText(e)}).`));
        return;
      }
      throw e;
    }
    clear(body, listTable([
      { title: 'Vhost', cell: (x) => x.vhost }, { title: 'Name', cell: (x) => x.name },
      { title: 'Pattern', cell: (x) => h('code', x.pattern) }, { title: 'Apply to', cell: (x) => x['apply-to'] },
      { title: 'Definition', cell: (x) => valueCell(x.definition) }, { title: 'Priority', cell: (x) => x.priority, num: true },
    ], ps, 'No policies', 'policies-table'));
  },
  async definitions(body) {
    const file = h('input#definitions-file', { type: 'file', accept: 'application/json,.json' });
    const result = h('div#import-result');
    clear(body,
      h('div.card', h('h3', 'Export'), h('p', 'Users, vhosts, permissions and the durable queues, exchanges and bindings, in RabbitMQ\'s format.'),
        action('Download definitions', async () => {
          const defs = await get('/api/definitions');
          const blob = new Blob([JSON.stringify(defs, null, 2)], { type: 'application/json' });
          const a = h('a', { href: URL.createObjectURL(blob), download: `lepus-definitions-${new Date().toISOString().slice(0, 10)}.json` });
          document.body.append(a);
          a.click();
          a.remove();
          setTimeout(() => URL.revokeObjectURL(a.href), 1000);
        }, { id: 'export-definitions' })),
      h('div.card', h('h3', 'Import'), h('p', 'A RabbitMQ or lepus export; validated whole first, an invalid one changes nothing.'),
        file, ' ', action('Upload definitions', async () => {
          if (!file.files.length) throw new Error('Choose a file first');
          const text = await file.files[0].text();
          clear(result);
          const r = await api('POST', '/api/definitions', text);
          clear(result, h('div.card', h('b', 'Imported. '), r ? kvTable(r) : ''));
          flash('Definitions imported');
          refreshVhosts();
        }, { id: 'import-definitions' }), result));
  },
};

route('admin', adminPage('users'), { section: 'admin' });
for (const [k] of ADMIN_TABS) route(`admin/${k}`, adminPage(k), { section: 'admin' });

// Keep ApiError importable by the curious; start the console.
window.lepusConsole.ApiError = ApiError;
start();
