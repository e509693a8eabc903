-- Token budgets on a cluster: what each node holds of every budget
-- (`{"pool:NAME" | "tenant:NAME": {"minute", "day", "reserved"}}`),
-- published with its tenant counts and summed by the others.
ALTER TABLE nodes ADD COLUMN tokens TEXT NOT NULL DEFAULT '{}';
