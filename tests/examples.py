"""ZStack's own examples, as the tests that compare with them need them."""

# The response example of the API page this service fronts (seeds/000_*.txt).
SEED_BODY = """{ "inventories": [ { "uuid": "cb2c34a46a753c5ab95807fabbae56af", "name": "TinyLinux",
"url": "http://192.168.1.20/share/images/tinylinux.qcow2", "mediaType": "RootVolumeTemplate",
"platform": "Linux", "format": "qcow2", "backupStorageRefs": [ { "id": 0,
"imageUuid": "cb2c34a46a753c5ab95807fabbae56af", "backupStorageUuid": "217396177c143e49ad21dd5679e28a61",
"installPath": "ceph://zs-images/f0b149e053b34c7eb7fe694b182ebffd", "status": "Ready" } ] } ] }"""
