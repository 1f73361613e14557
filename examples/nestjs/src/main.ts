import "reflect-metadata";

import { NestFactory } from "@nestjs/core";

import { AppModule } from "./app.module.js";

const app = await NestFactory.create(AppModule, { logger: ["log", "warn", "error"] });
app.enableShutdownHooks();
await app.listen(Number(process.env.PORT ?? 3100), "127.0.0.1");
const address = app.getHttpServer().address();
console.log(JSON.stringify({ message: "listening", port: address.port }));
