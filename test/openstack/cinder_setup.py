#!/usr/bin/python3
"""blockvol test infrastructure: Cinder objects the tests use (needs
cinder-api up). Idempotent.

Volume types:
file, fast -> backend FILE1 (the file-backed driver)
nowhere    -> backend NOWHERE, which does not exist: the scheduler puts such
              volumes in status "error" (the tests' way to provoke that state)

Quotas: Cinder's defaults (10 volumes, 10 snapshots, 10 backups, 1000 GiB)
are too small for the VM tests' parallel mounts (8+8 volumes at once, with
the volumes of other scenarios beside them). QUOTAS is set on the default
quota class (projects made later) and on the projects admin, demo and
service.
"""
import requests
KS = 'http://127.0.0.1:5000/v3'
QUOTAS = {"volumes": 100, "snapshots": 100, "backups": 100, "gigabytes": 2000}
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

requests.put(ep + '/os-quota-class-sets/default', headers=H, json={"quota_class_set": QUOTAS}).raise_for_status()
for name in ('admin', 'demo', 'service'):
    projects = requests.get(KS + '/projects', headers=H, params={'name': name}).json()['projects']
    if not projects: continue
    pid = projects[0]['id']
    requests.put('%s/os-quota-sets/%s' % (ep, pid), headers=H, json={"quota_set": QUOTAS}).raise_for_status()
    got = requests.get('%s/os-quota-sets/%s' % (ep, pid), headers=H).json()['quota_set']
    bad = {k: got.get(k) for k, v in QUOTAS.items() if got.get(k) != v}
    if bad: raise SystemExit('quotas of project %s not raised: %s' % (name, bad))
print('quotas of projects admin, demo, service and the default class:', QUOTAS)
