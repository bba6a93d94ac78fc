-- wrk script for the single-POST figure in docs/performance.md:
--   wrk -t1 -c32 -d8s -s scripts/wrk_post.lua http://127.0.0.1:5000/dummy
wrk.method = "POST"
wrk.body   = '{"bench": true, "text": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
wrk.headers["Content-Type"] = "application/json"
