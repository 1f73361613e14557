// The reference receiver the load figures compare against: what a team would
// write by hand with Express, the official stripe SDK and node-postgres, one
// transaction per event (record the event, then the purchase), one log line
// per webhook. Not part of the product: see README.md here.
const express = require('express');
const Stripe = require('stripe');
const { Pool } = require('pg');
const stripe = Stripe('sk_test_dummy');
const secret = 'whsec_node_reference';
const pool = new Pool({ host: '127.0.0.1', user: 'postgres', database: 'node_reference', max: 20 });
const app = express();
app.post('/webhook', express.raw({ type: '*/*' }), async (req, res) => {
  let event;
  try {
    event = stripe.webhooks.constructEvent(req.body, req.headers['stripe-signature'], secret);
  } catch (e) { return res.status(400).send('bad signature'); }
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const r = await client.query(
      'INSERT INTO events (event_id, type, payload) VALUES ($1, $2, $3) ON CONFLICT (event_id) DO NOTHING RETURNING id',
      [event.id, event.type, req.body.toString('utf8')]);
    if (r.rowCount === 1 && event.type === 'checkout.session.completed') {
      const s = event.data.object;
      await client.query(
        'INSERT INTO purchases (session_id, user_id, course_id, status) VALUES ($1, $2, $3, $4) ON CONFLICT (session_id) DO NOTHING',
        [s.id, s.metadata.userId, s.metadata.courseId, s.payment_status]);
    }
    await client.query('COMMIT');
    console.log(JSON.stringify({ msg: 'webhook handled', event_id: event.id, type: event.type }));
    res.json({ received: true });
  } catch (e) {
    await client.query('ROLLBACK').catch(() => {});
    res.status(503).send('db');
  } finally { client.release(); }
});
app.listen(3999, '127.0.0.1', () => console.log('listening'));
