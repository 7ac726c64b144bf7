"""A namespace's buckets through boto3, as a user drives them: the e2e test
`buckets::boto3_...` runs this with a node's URL and tokens in the
environment. Each check raises on a wrong answer; the last line printed is
`ok`."""

import hashlib
import io
import os
import urllib.request

import boto3
import botocore
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

URL = os.environ["WISP_URL"] + "/s3"
# Presigned URLs are SigV4 only, as boto3 makes them once asked to.
CONFIG = Config(
    s3={"addressing_style": "path"}, signature_version="s3v4", retries={"max_attempts": 1}
)


def keys_of(token):
    digest = hashlib.sha256(token.encode()).digest()
    return hashlib.sha256(digest).hexdigest()[:20], digest.hex()


def client(token, secret=None):
    key_id, derived = keys_of(token)
    return boto3.client(
        "s3",
        endpoint_url=URL,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret or derived,
        config=CONFIG,
    )


def refused(call, status, code):
    try:
        call()
    except botocore.exceptions.ClientError as error:
        got = (error.response["ResponseMetadata"]["HTTPStatusCode"], error.response["Error"]["Code"])
        assert got == (status, code), f"expected {status} {code}, got {got}"
        return
    raise AssertionError(f"expected {status} {code}, got a success")


a = client(os.environ["TEAM_A_TOKEN"])
a.create_bucket(Bucket="photos")
assert [b["Name"] for b in a.list_buckets()["Buckets"]] == ["photos"]

# Put, head, get whole and ranged.
a.put_object(Bucket="photos", Key="cats/tom.txt", Body=b"0123456789", ContentType="text/plain")
head = a.head_object(Bucket="photos", Key="cats/tom.txt")
assert head["ContentLength"] == 10 and head["ContentType"] == "text/plain", head
got = a.get_object(Bucket="photos", Key="cats/tom.txt")
assert got["Body"].read() == b"0123456789"
ranged = a.get_object(Bucket="photos", Key="cats/tom.txt", Range="bytes=2-5")
assert ranged["Body"].read() == b"2345" and ranged["ContentRange"] == "bytes 2-5/10", ranged
refused(lambda: a.get_object(Bucket="photos", Key="cats/tom.txt", Range="bytes=20-"), 416, "InvalidRange")
refused(lambda: a.get_object(Bucket="photos", Key="nobody"), 404, "NoSuchKey")

# Listing: a prefix, a delimiter, and pages that join up.
for name in ["cats/ada.txt", "dogs/rex.txt", "dogs/fido.txt", "top & odd key.txt"]:
    a.put_object(Bucket="photos", Key=name, Body=name.encode())
listed = a.list_objects_v2(Bucket="photos", Delimiter="/")
assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["cats/", "dogs/"], listed
assert [o["Key"] for o in listed["Contents"]] == ["top & odd key.txt"], listed
listed = a.list_objects_v2(Bucket="photos", Prefix="dogs/")
assert [o["Key"] for o in listed["Contents"]] == ["dogs/fido.txt", "dogs/rex.txt"], listed
pages = a.get_paginator("list_objects_v2").paginate(Bucket="photos", PaginationConfig={"PageSize": 2})
keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
assert keys == sorted(["cats/tom.txt", "cats/ada.txt", "dogs/rex.txt", "dogs/fido.txt", "top & odd key.txt"]), keys
pages = a.get_paginator("list_objects").paginate(Bucket="photos", PaginationConfig={"PageSize": 2})
assert [o["Key"] for page in pages for o in page.get("Contents", [])] == keys
# Pages of one entry with a delimiter: each prefix once, in both versions.
for version in ["list_objects", "list_objects_v2"]:
    pages = list(a.get_paginator(version).paginate(
        Bucket="photos", Delimiter="/", PaginationConfig={"PageSize": 1}))
    entries = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
    entries += [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert entries == ["cats/", "dogs/", "top & odd key.txt"], (version, entries)
# Operations wisp does not implement are refused, never taken for others.
refused(lambda: a.put_object_acl(Bucket="photos", Key="cats/tom.txt", ACL="private"), 501, "NotImplemented")
refused(lambda: a.delete_object_tagging(Bucket="photos", Key="cats/tom.txt"), 501, "NotImplemented")
refused(lambda: a.delete_bucket_cors(Bucket="photos"), 501, "NotImplemented")
assert a.get_object(Bucket="photos", Key="cats/tom.txt")["Body"].read() == b"0123456789"

# A 50 MB upload goes in parts of 8 MiB, and comes back whole.
big = os.urandom(50 * 1000 * 1000)
config = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024)
a.upload_fileobj(io.BytesIO(big), "photos", "big.bin", Config=config)
head = a.head_object(Bucket="photos", Key="big.bin")
assert head["ContentLength"] == len(big) and head["ETag"].endswith('-6"'), head
sink = io.BytesIO()
a.download_fileobj("photos", "big.bin", sink)
assert hashlib.sha256(sink.getvalue()).digest() == hashlib.sha256(big).digest()
tail = a.get_object(Bucket="photos", Key="big.bin", Range="bytes=-100")["Body"].read()
assert tail == big[-100:]

# An upload aborted leaves nothing; one completed with a part missing is refused.
upload = a.create_multipart_upload(Bucket="photos", Key="half.bin")["UploadId"]
a.upload_part(Bucket="photos", Key="half.bin", UploadId=upload, PartNumber=1, Body=b"x" * 10)
refused(
    lambda: a.complete_multipart_upload(
        Bucket="photos", Key="half.bin", UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"0"'}]},
    ),
    400, "InvalidPart",
)
a.abort_multipart_upload(Bucket="photos", Key="half.bin", UploadId=upload)
refused(lambda: a.head_object(Bucket="photos", Key="half.bin"), 404, "404")

# A presigned URL reads the object with no credentials of its own.
url = a.generate_presigned_url("get_object", Params={"Bucket": "photos", "Key": "cats/tom.txt"}, ExpiresIn=60)
assert urllib.request.urlopen(url).read() == b"0123456789"

# Wrong credentials are a 403; so is a token that may only invoke.
key_id, _ = keys_of(os.environ["TEAM_A_TOKEN"])
refused(lambda: client(os.environ["TEAM_A_TOKEN"], secret="0" * 64).list_buckets(), 403, "SignatureDoesNotMatch")
refused(lambda: client("wisp_" + "0" * 64).list_buckets(), 403, "InvalidAccessKeyId")
refused(lambda: client(os.environ["TEAM_A_INVOKE_TOKEN"]).list_objects_v2(Bucket="photos"), 403, "AccessDenied")

# Another namespace's token sees its own buckets only, and cannot name team-a's.
b = client(os.environ["TEAM_B_TOKEN"])
assert b.list_buckets()["Buckets"] == []
refused(lambda: b.get_object(Bucket="photos", Key="cats/tom.txt"), 404, "NoSuchBucket")
refused(lambda: b.get_object(Bucket="photos.team-a", Key="cats/tom.txt"), 403, "AccessDenied")
# The node's admin token reaches team-a's bucket by its full name.
admin = client(os.environ["ADMIN_TOKEN"])
assert admin.get_object(Bucket="photos.team-a", Key="cats/tom.txt")["Body"].read() == b"0123456789"

# Deletions, one and a batch; a bucket goes once it is empty.
refused(lambda: a.delete_bucket(Bucket="photos"), 409, "BucketNotEmpty")
a.delete_object(Bucket="photos", Key="big.bin")
everything = [{"Key": o["Key"]} for o in a.list_objects_v2(Bucket="photos")["Contents"]]
deleted = a.delete_objects(Bucket="photos", Delete={"Objects": everything})
assert len(deleted["Deleted"]) == 5, deleted
assert a.list_objects_v2(Bucket="photos")["KeyCount"] == 0
a.delete_bucket(Bucket="photos")
assert a.list_buckets()["Buckets"] == []
print("ok")
