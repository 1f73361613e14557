// Closed-loop load for server.js: C keep-alive connections, each sending the
// next pre-signed unique event (fresh event, session and payment-intent ids
// and buyer, from the 4.7 KB fixture) as soon as the last one is answered, for
// D seconds. Usage: node load.js C D
const http = require('http');
const crypto = require('crypto');
const fs = require('fs');
const [C, D] = [parseInt(process.argv[2]), parseInt(process.argv[3])];
const template = fs.readFileSync(require('path').join(__dirname, '../../tests/fixtures/stripe/checkout_session_completed_paid.json'), 'utf8');
const N = 90000, bodies = [];
const now = Math.floor(Date.now() / 1000);
for (let i = 0; i < N; i++) {
  const e = JSON.parse(template);
  e.id = `evt_node${i}_${now}`; e.data.object.id = `cs_test_node${i}_${now}`;
  e.data.object.payment_intent = `pi_node${i}`; e.data.object.metadata.userId = `user_${i}`;
  const body = JSON.stringify(e, null, 2);
  const t = Math.floor(Date.now() / 1000);
  const sig = crypto.createHmac('sha256', 'whsec_node_reference').update(`${t}.${body}`).digest('hex');
  bodies.push([body, `t=${t},v1=${sig}`]);
}
const agent = new http.Agent({ keepAlive: true, maxSockets: C });
let next = 0, ok = 0, bad = 0; const lat = [];
const end = Date.now() + D * 1000;
function one() {
  if (Date.now() > end || next >= N) return Promise.resolve();
  const [body, sig] = bodies[next++];
  const t0 = process.hrtime.bigint();
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port: 3999, path: '/webhook', method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'stripe-signature': sig, 'content-length': Buffer.byteLength(body) } }, (res) => {
      res.resume(); res.on('end', () => { if (res.statusCode === 200) ok++; else bad++; lat.push(Number(process.hrtime.bigint() - t0) / 1e6); resolve(); });
    });
    req.end(body);
  }).then(one);
}
const started = Date.now();
Promise.all(Array.from({ length: C }, one)).then(() => {
  const secs = (Date.now() - started) / 1000; lat.sort((a, b) => a - b);
  const p = (q) => lat[Math.floor(q * (lat.length - 1))].toFixed(2);
  console.log(`c=${C} ok ${ok} bad ${bad} ev/s ${(ok / secs).toFixed(0)} p50 ${p(0.5)} p99 ${p(0.99)} ms`);
});
