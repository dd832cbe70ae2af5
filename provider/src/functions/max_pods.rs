//! `provider::kube::max_pods(instance_type, prefix_delegation)`: the EKS
//! max-pods figure for an instance type, computed by the IPAM engine from
//! its embedded EC2 network limits, so it is the figure the engine really
//! delivers (see agents/ipam/EC2_LIMITS.md for the table's source).

use tfplugin::{Function, FunctionDefinition, FunctionError, Parameter, Type, Value};
use trellis_ipam::{Settings, limits};

#[derive(Debug)]
pub struct MaxPods;

impl Function for MaxPods {
    fn name(&self) -> &'static str {
        "max_pods"
    }

    fn definition(&self) -> FunctionDefinition {
        FunctionDefinition {
            summary: "The EKS max-pods figure for an EC2 instance type.".into(),
            description: "Returns how many pods a node of `instance_type` can run on EKS with VPC pod \
                addressing: `ENIs * (IPv4 per ENI - 1) + 2`, or with prefix delegation \
                `ENIs * ((IPv4 per ENI - 1) * 16) + 2` capped at 110 for instances with at most 30 vCPUs \
                and 250 above. ENIs count only the default network card. The figures come from an \
                embedded copy of EC2 DescribeInstanceTypes; an instance type missing from it is an error."
                .into(),
            parameters: vec![
                Parameter {
                    name: "instance_type".into(),
                    ty: Type::String,
                    description: "EC2 instance type, e.g. `m5.large`.".into(),
                    allow_null: false,
                },
                Parameter {
                    name: "prefix_delegation".into(),
                    ty: Type::Bool,
                    description: "Whether ENIs get /28 prefixes (prefix delegation) instead of single addresses."
                        .into(),
                    allow_null: false,
                },
            ],
            return_type: Type::Number,
        }
    }

    fn call(&self, arguments: &[Value]) -> Result<Value, FunctionError> {
        let instance_type = arguments
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| FunctionError::argument(0, "instance_type must be a string"))?;
        let prefix_delegation = arguments
            .get(1)
            .and_then(Value::as_bool)
            .ok_or_else(|| FunctionError::argument(1, "prefix_delegation must be a bool"))?;
        let limits = limits::embedded(instance_type).ok_or_else(|| {
            FunctionError::argument(
                0,
                format!("unknown EC2 instance type {instance_type:?}: it is not in the provider's table of instance network limits"),
            )
        })?;
        if prefix_delegation && !limits.nitro {
            return Err(FunctionError::argument(
                1,
                format!("{instance_type} is not a Nitro instance type, and prefix delegation needs Nitro"),
            ));
        }
        let settings = Settings { prefix_delegation, ..Settings::default() };
        Ok(Value::int(i64::from(limits::max_pods(&limits, &settings))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(instance_type: &str, pd: bool) -> Result<Value, FunctionError> {
        MaxPods.call(&[Value::string(instance_type), Value::Bool(pd)])
    }

    #[test]
    fn matches_the_eks_figures() {
        assert_eq!(call("m5.large", false), Ok(Value::int(29)));
        assert_eq!(call("m5.large", true), Ok(Value::int(110)));
        assert_eq!(call("t3.micro", false), Ok(Value::int(4)));
        assert_eq!(call("m5.24xlarge", false), Ok(Value::int(737)));
        assert_eq!(call("m5.24xlarge", true), Ok(Value::int(250)));
        // Only the default network card's ENIs host pods.
        assert_eq!(call("p4d.24xlarge", false), Ok(Value::int(737)));
    }

    #[test]
    fn unknown_instance_type_is_an_error_naming_it() {
        let e = call("m5.gigantic", false).expect_err("unknown type");
        assert_eq!(e.argument, Some(0));
        assert!(e.text.contains("\"m5.gigantic\""), "{}", e.text);
    }

    #[test]
    fn prefix_delegation_on_xen_is_refused() {
        let e = call("t2.medium", true).expect_err("xen");
        assert_eq!(e.argument, Some(1));
    }
}
