-- wrk script: POSTs the repository's 4.7 KB fixture with a Stripe-Signature
-- header of Stripe's size, on keep-alive connections.
local file = assert(io.open(os.getenv("FIXTURE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json; charset=utf-8"
wrk.headers["Stripe-Signature"] = "t=1764259200,v1=" .. string.rep("0", 64)
