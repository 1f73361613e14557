import {
  type DynamicModule,
  Global,
  Inject,
  type InjectionToken,
  Module,
  type OnApplicationShutdown,
  type OptionalFactoryDependency,
} from "@nestjs/common";
import { PaymentsClient, type PaymentsClientOptions } from "@payments/client";

/** The options' injection token, for forRootAsync factories. */
export const PAYMENTS_OPTIONS = Symbol("PAYMENTS_OPTIONS");

export interface PaymentsModuleAsyncOptions {
  imports?: DynamicModule["imports"];
  inject?: Array<InjectionToken | OptionalFactoryDependency>;
  // Nest passes the injected providers, whatever their types.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  useFactory: (...args: any[]) => PaymentsClientOptions | Promise<PaymentsClientOptions>;
}

/** Closes the shared client's connection when the application stops. */
class ClientCloser implements OnApplicationShutdown {
  constructor(@Inject(PaymentsClient) private readonly client: PaymentsClient) {}

  onApplicationShutdown(): void {
    this.client.close();
  }
}

/**
 * Provides one {@link PaymentsClient} to the whole application (inject it by
 * its class). `forRoot` takes the options; `forRootAsync` builds them from
 * other providers (a ConfigService, say).
 */
@Global()
@Module({})
export class PaymentsModule {
  static forRoot(options: PaymentsClientOptions): DynamicModule {
    return PaymentsModule.forRootAsync({ useFactory: () => options });
  }

  static forRootAsync(options: PaymentsModuleAsyncOptions): DynamicModule {
    return {
      module: PaymentsModule,
      imports: options.imports ?? [],
      providers: [
        { provide: PAYMENTS_OPTIONS, useFactory: options.useFactory, inject: options.inject ?? [] },
        {
          provide: PaymentsClient,
          useFactory: (clientOptions: PaymentsClientOptions) => new PaymentsClient(clientOptions),
          inject: [PAYMENTS_OPTIONS],
        },
        ClientCloser,
      ],
      exports: [PaymentsClient],
    };
  }
}
