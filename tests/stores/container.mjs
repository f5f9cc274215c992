// Makes a blob container in an Azurite account: node container.mjs http://127.0.0.1:PORT NAME
import { BlobServiceClient, StorageSharedKeyCredential } from "@azure/storage-blob";

const [endpoint, container] = process.argv.slice(2);
// Azurite's documented development account.
const account = "devstoreaccount1";
const key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const service = new BlobServiceClient(`${endpoint}/${account}`, new StorageSharedKeyCredential(account, key));
await service.getContainerClient(container).createIfNotExists();
