"""blockvol test infrastructure, not part of the product.

Tiny Cinder volume driver: volumes are sparse files, exported over iSCSI
with Cinder's own target helpers (target_helper=tgtadm -> cinder.volume.targets.tgt.TgtAdm).

Use:  volume_driver = oscloud_filedriver.FileISCSIDriver  (module on PYTHONPATH)
"""
import os
import shutil

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import importutils
from oslo_utils import units

from cinder import exception
from cinder import interface
from cinder.volume import driver

LOG = logging.getLogger(__name__)

file_opts = [
    cfg.StrOpt('file_volumes_dir', default='/var/lib/cinder/file-volumes',
               help='Directory holding the sparse volume files.'),
    cfg.IntOpt('file_volumes_capacity_gb', default=1000,
               help='Capacity reported to the scheduler.'),
]
cfg.CONF.register_opts(file_opts, group='backend_defaults')


@interface.volumedriver
class FileISCSIDriver(driver.VolumeDriver):
    VERSION = '1.0.0'
    CI_WIKI_NAME = 'none'

    def __init__(self, *args, **kwargs):
        super(FileISCSIDriver, self).__init__(*args, **kwargs)
        self.configuration.append_config_values(file_opts)
        self.backend_name = (self.configuration.safe_get('volume_backend_name')
                             or 'FILE')
        target_driver = self.target_mapping[
            self.configuration.safe_get('target_helper')]
        self.target_driver = importutils.import_object(
            target_driver, configuration=self.configuration,
            executor=self._execute)
        self.protocol = self.target_driver.protocol

    @staticmethod
    def get_driver_options():
        return file_opts

    # ---- setup / stats -------------------------------------------------
    @property
    def _dir(self):
        return self.configuration.file_volumes_dir

    def do_setup(self, context):
        os.makedirs(self._dir, exist_ok=True)

    def check_for_setup_error(self):
        if not os.path.isdir(self._dir):
            raise exception.VolumeBackendAPIException(
                data='missing %s' % self._dir)

    def _update_volume_stats(self):
        total = self.configuration.file_volumes_capacity_gb
        files = [f for f in os.listdir(self._dir)]
        provisioned = sum(os.path.getsize(os.path.join(self._dir, f))
                          for f in files) / units.Gi
        self._stats = {
            'volume_backend_name': self.backend_name,
            'vendor_name': 'Open Source',
            'driver_version': self.VERSION,
            'storage_protocol': self.protocol,
            'shared_targets': False,
            'sparse_copy_volume': True,
            'pools': [{
                'pool_name': self.backend_name,
                'total_capacity_gb': total,
                'free_capacity_gb': max(total - provisioned, 0),
                'provisioned_capacity_gb': provisioned,
                'reserved_percentage': 0,
                'max_over_subscription_ratio': 20.0,
                'thin_provisioning_support': True,
                'thick_provisioning_support': False,
                'total_volumes': len(files),
                'QoS_support': False,
                'multiattach': True,
                'backend_state': 'up',
                'location_info': 'FileISCSIDriver:%s' % self._dir,
            }],
        }

    def get_pool(self, volume):
        return self.backend_name

    # ---- data path -----------------------------------------------------
    def local_path(self, volume):
        return os.path.join(self._dir, volume.name)

    def _make_file(self, path, size_gb):
        with open(path, 'ab') as f:
            f.truncate(int(size_gb) * units.Gi)

    def create_volume(self, volume):
        self._make_file(self.local_path(volume), volume.size)
        return {}

    def delete_volume(self, volume):
        p = self.local_path(volume)
        if os.path.exists(p):
            os.unlink(p)

    def _copy(self, src, dst, size_gb):
        self._execute('cp', '--sparse=always', src, dst)
        self._make_file(dst, size_gb)

    def create_snapshot(self, snapshot):
        self._copy(self.local_path(snapshot.volume),
                   os.path.join(self._dir, snapshot.name),
                   snapshot.volume_size)

    def delete_snapshot(self, snapshot):
        p = os.path.join(self._dir, snapshot.name)
        if os.path.exists(p):
            os.unlink(p)

    def create_volume_from_snapshot(self, volume, snapshot):
        self._copy(os.path.join(self._dir, snapshot.name),
                   self.local_path(volume), volume.size)

    def create_cloned_volume(self, volume, src_vref):
        self._copy(self.local_path(src_vref), self.local_path(volume),
                   volume.size)

    def extend_volume(self, volume, new_size):
        self._make_file(self.local_path(volume), new_size)
        self.target_driver.extend_target(volume)

    # ---- export / connection (delegated to the target helper) ------------
    def ensure_export(self, context, volume):
        return self.target_driver.ensure_export(context, volume,
                                                self.local_path(volume))

    def create_export(self, context, volume, connector):
        info = self.target_driver.create_export(context, volume,
                                                self.local_path(volume))
        return {'provider_location': info['location'],
                'provider_auth': info['auth']}

    def remove_export(self, context, volume):
        self.target_driver.remove_export(context, volume)

    def create_export_snapshot(self, context, snapshot, connector):
        pass

    def remove_export_snapshot(self, context, snapshot):
        pass

    def initialize_connection(self, volume, connector, **kwargs):
        return self.target_driver.initialize_connection(volume, connector)

    def validate_connector(self, connector):
        return self.target_driver.validate_connector(connector)

    def terminate_connection(self, volume, connector, **kwargs):
        # Same semantics as the LVM driver: keep the export while other
        # attachments remain.
        attachments = volume.volume_attachment
        if volume.multiattach and connector:
            if sum(1 for a in attachments if a.connector and
                   a.connector.get('initiator') ==
                   connector.get('initiator')) > 1:
                return True
        self.target_driver.terminate_connection(volume, connector, **kwargs)
        return len(attachments) > 1
