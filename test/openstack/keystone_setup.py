#!/usr/bin/python3
"""blockvol test infrastructure: Keystone objects the Cinder tests use.

- project service, user cinder/cinderpass (roles admin+service): Cinder's own user
- project demo, user demo/demopass (role member only): a non-admin tenant
- services block-storage and volumev3 with public/internal/admin endpoints in RegionOne
Idempotent. Needs Keystone up and the bootstrap admin/secret.
"""
import requests
KS = 'http://127.0.0.1:5000/v3'
auth = {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"}, "password": "secret"}}},
                 "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}
r = requests.post(KS + '/auth/tokens', json=auth); r.raise_for_status()
H = {'X-Auth-Token': r.headers['X-Subject-Token']}
def get_or_create(coll, key, body, **filt):
    l = requests.get('%s/%s' % (KS, coll), headers=H, params=filt).json()[coll]
    if l: return l[0]['id']
    r = requests.post('%s/%s' % (KS, coll), headers=H, json={key: body}); r.raise_for_status()
    return r.json()[key]['id']
def grant(proj, user, role):
    rid = get_or_create('roles', 'role', {"name": role}, name=role)
    requests.put('%s/projects/%s/users/%s/roles/%s' % (KS, proj, user, rid), headers=H).raise_for_status()
proj = get_or_create('projects', 'project', {"name": "service", "domain_id": "default"}, name='service')
user = get_or_create('users', 'user', {"name": "cinder", "domain_id": "default", "password": "cinderpass"}, name='cinder')
for rn in ('admin', 'service'):
    grant(proj, user, rn)
demo = get_or_create('projects', 'project', {"name": "demo", "domain_id": "default"}, name='demo')
duser = get_or_create('users', 'user', {"name": "demo", "domain_id": "default", "password": "demopass"}, name='demo')
grant(demo, duser, 'member')
for stype, sname in (('block-storage', 'cinder'), ('volumev3', 'cinderv3')):
    sid = get_or_create('services', 'service', {"type": stype, "name": sname}, type=stype)
    for iface in ('public', 'internal', 'admin'):
        get_or_create('endpoints', 'endpoint', {"service_id": sid, "interface": iface, "region_id": "RegionOne",
                      "url": "http://127.0.0.1:8776/v3/%(project_id)s"}, service_id=sid, interface=iface)
print('keystone setup done')
