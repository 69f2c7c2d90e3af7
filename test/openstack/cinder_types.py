#!/usr/bin/python3
"""blockvol test infrastructure: volume types (needs cinder-api up). Idempotent.

file, fast -> backend FILE1 (the file-backed driver)
nowhere    -> backend NOWHERE, which does not exist: the scheduler puts such
              volumes in status "error" (the tests' way to provoke that state)
"""
import requests
KS = 'http://127.0.0.1:5000/v3'
auth = {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"}, "password": "secret"}}},
                 "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}
r = requests.post(KS + '/auth/tokens', json=auth); r.raise_for_status()
H = {'X-Auth-Token': r.headers['X-Subject-Token']}
ep = [e['url'] for s in r.json()['token']['catalog'] if s['type'] == 'block-storage' for e in s['endpoints'] if e['interface'] == 'public'][0]
have = {t['name'] for t in requests.get(ep + '/types', headers=H).json()['volume_types']}
want = {'file': 'FILE1', 'fast': 'FILE1', 'nowhere': 'NOWHERE'}
for name, backend in want.items():
    if name in have: continue
    t = requests.post(ep + '/types', headers=H, json={"volume_type": {"name": name, "extra_specs": {"volume_backend_name": backend}}})
    t.raise_for_status()
print('volume types:', sorted(have | set(want)))
